#!/usr/bin/perl
# The program's view of its world, written to fd 1 (the socket under tcpserver):
# its exact start-up environment (sorted), its open fds (socket/pipe inode numbers dropped),
# its signal mask and ignored signals, and its uid/gid/groups.  Used by tests/test_tcpserver*.py.
use strict;
use warnings;
use Fcntl qw(F_GETFL O_NONBLOCK);
use Socket qw(IPPROTO_TCP TCP_NODELAY SOL_SOCKET SO_KEEPALIVE);

my $pid = $$;
open(my $e, "<", "/proc/$pid/environ") or die "environ: $!";
my $raw = do { local $/; <$e> };
close $e;
for my $entry (sort grep { length } split /\0/, $raw) {
    $entry =~ s/\\/\\\\/g;
    $entry =~ s/\n/\\n/g;
    print "env $entry\n";
}

opendir(my $d, "/proc/$pid/fd") or die "fd: $!";
my @fds = grep { /^\d+$/ } readdir($d);
closedir $d;
for my $fd (sort { $a <=> $b } @fds) {
    my $target = readlink("/proc/$pid/fd/$fd");
    next unless defined $target;    # the directory handle used for the listing, now closed
    $target =~ s/^(socket|pipe|anon_inode):.*/$1/;
    print "fd $fd $target\n";
}

open(my $s, "<", "/proc/$pid/status") or die "status: $!";
while (my $line = <$s>) {
    $line =~ s/\t/ /g;
    print $line if $line =~ /^(SigBlk|SigIgn|Uid|Gid|Groups|Umask):/;
}
close $s;

# fd 0 as a socket: TCP_NODELAY, SO_KEEPALIVE, O_NONBLOCK
my $nodelay = getsockopt(STDIN, IPPROTO_TCP, TCP_NODELAY);
my $keepalive = getsockopt(STDIN, SOL_SOCKET, SO_KEEPALIVE);
my $flags = fcntl(STDIN, F_GETFL, 0);
printf "sock nodelay=%s keepalive=%s nonblock=%s\n",
    defined $nodelay ? unpack("i", $nodelay) : "-",
    defined $keepalive ? unpack("i", $keepalive) : "-",
    defined $flags ? (($flags & O_NONBLOCK) ? 1 : 0) : "-";

open(my $st, "<", "/proc/$pid/stat") or die "stat: $!";
my $stat = <$st>;
close $st;
$stat =~ s/^.*\) //;    # fields after "pid (comm) "
my (undef, $ppid, $pgrp, $sid) = split / /, $stat;
print "pgrp $pgrp\nsid $sid\n";
print "cwd ", readlink("/proc/$pid/cwd"), "\n";
print "pid $pid\n";
