#!/usr/bin/perl
# sink.pl: read the client's bytes until EOF (or until the client goes away), then report the count.
use strict;
use warnings;
my ($total, $buf) = (0, "");
while (1) {
    my $n = sysread(STDIN, $buf, 65536);
    last unless $n;
    $total += $n;
}
syswrite(STDOUT, "read $total\n");
