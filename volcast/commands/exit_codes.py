"""The exit codes of every ``volcast`` verb, in one place: README and ``volcast --help`` list them."""

from __future__ import annotations

OK = 0
FAILED = 1  # the job could not be done: unusable input, a service unreachable or refusing us, a failed run
USAGE = 2  # bad command line or configuration file
UNHEALTHY = 3  # ``status --check``: the part named is not healthy
INTERRUPTED = 130  # Ctrl-C before a one-shot job finished (128 + SIGINT, as a shell reports it)
BROKEN_PIPE = 141  # standard output was closed, e.g. piped into ``head`` (128 + SIGPIPE)

HELP = """exit codes (every verb):
  0    done; services stopped by Ctrl-C or SIGTERM also exit 0 after a clean shutdown
  1    the job failed: unusable input file, too few bars, Redis or MQTT unreachable or refusing
       the credentials, a refit that failed; one line on stderr says what to do
  2    bad command line or configuration file (the message names the file and the key)
  3    status --check: the part named is not healthy
  130  interrupted by Ctrl-C before a one-shot job finished
  141  standard output was closed (e.g. piped into head); nothing else is printed
Add -v (before the verb) for debug logs and the traceback of an unexpected error."""
