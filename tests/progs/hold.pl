#!/usr/bin/perl
# hold.pl LOGFILE SECONDS: append "start PID T" to LOGFILE, hold the connection SECONDS,
# append "end PID T", then write "done PID\n" to the client.  T is CLOCK_MONOTONIC.
use strict;
use warnings;
use Fcntl qw(O_WRONLY O_APPEND O_CREAT);
use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC sleep);

my ($log, $seconds) = @ARGV;
sub note {
    my ($what) = @_;
    sysopen(my $fh, $log, O_WRONLY | O_APPEND | O_CREAT, 0644) or die "$log: $!";
    syswrite($fh, sprintf("%s %d %.6f\n", $what, $$, clock_gettime(CLOCK_MONOTONIC)));
    close $fh;
}
note("start");
sleep($seconds);
note("end");
syswrite(STDOUT, "done $$\n");
