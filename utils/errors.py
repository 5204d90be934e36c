"""User-facing errors: one line that names the problem and the fix.

Library code raises `SegMentorError` for anything a user can cause (missing
dataset, bad flag value, corrupt record, missing checkpoint). Scripts run their
`main` through `run_main`, which prints that line instead of a traceback.
Programming errors still raise ordinary exceptions, with their traceback.
"""
import sys

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's code for a SIGINT death


class SegMentorError(Exception):
    """An error caused by the user's input; its message is the whole report."""


def run_main(main, parser, argv=None):
    """Parse `argv`, call `main(args)`, and turn a SegMentorError into one line.

    Ctrl-C outside a loop that handles it (graph building, data generation,
    a second Ctrl-C) also ends in one line rather than a traceback.
    Returns the process exit code (0 on success) so callers can `sys.exit` it.
    """
    args = parser.parse_args(argv)
    prog = parser.prog or "seg-mentor"
    try:
        main(args)
    except SegMentorError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
