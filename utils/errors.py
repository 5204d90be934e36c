"""User-facing errors: one line that names the problem and the fix.

Library code raises `SegMentorError` for anything a user can cause (missing
dataset, bad flag value, corrupt record, missing checkpoint). Scripts run their
`main` through `run_main`, which prints that line instead of a traceback.
Programming errors still raise ordinary exceptions, with their traceback.
"""
import sys

EXIT_USER_ERROR = 2


class SegMentorError(Exception):
    """An error caused by the user's input; its message is the whole report."""


def run_main(main, parser, argv=None):
    """Parse `argv`, call `main(args)`, and turn a SegMentorError into one line.

    Returns the process exit code (0 on success) so callers can `sys.exit` it.
    """
    args = parser.parse_args(argv)
    try:
        main(args)
    except SegMentorError as err:
        prog = parser.prog or "seg-mentor"
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0
