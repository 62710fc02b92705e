#!/usr/bin/perl
# sigwrap.pl SIG... -- PROG ARGS...: start PROG with every signal 1..31 at its default action except
# the named ones, which are ignored, and with nothing blocked.
use strict;
use warnings;
use POSIX qw(sigaction sigprocmask SIG_SETMASK SIGKILL SIGSTOP);
use Config;

my @ignore;
while (@ARGV && $ARGV[0] ne "--") { push @ignore, shift @ARGV; }
shift @ARGV;
my %number;
@number{ split " ", $Config{sig_name} } = split " ", $Config{sig_num};
for my $sig (1 .. 31) {
    next if $sig == SIGKILL || $sig == SIGSTOP;
    sigaction($sig, POSIX::SigAction->new("DEFAULT")) or die "sigaction $sig: $!";
}
for my $name (@ignore) {
    sigaction($number{$name}, POSIX::SigAction->new("IGNORE")) or die "sigaction $name: $!";
}
sigprocmask(SIG_SETMASK, POSIX::SigSet->new()) or die "sigprocmask: $!";
exec { $ARGV[0] } @ARGV or die "exec $ARGV[0]: $!";
