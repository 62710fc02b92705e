/* A program for tcpserver benchmarks: writes the CPU its own process has used so far, in microseconds,
 * and exits.  A process keeps its CPU count across execve, so for a forking server (0.88 forks, then its
 * child sets up the connection and executes the program) the figure includes the work the server did in
 * the child before the exec; for a server that starts programs with posix_spawn it is almost only the
 * exec.  loadtest/preexec.py compares the two with the same probe started by a bare posix_spawn loop. */
#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>

int main(void)
{
    struct rusage ru;
    char line[32];
    int n;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 111;
    n = snprintf(line, sizeof line, "%ld\n",
                 (long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000L + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    return write(1, line, (size_t)n) == n ? 0 : 111;
}
