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


def first_line(err):
    """The first line of an exception's message that says what is wrong.

    TensorFlow and PIL errors carry multi-line messages; a one-line report
    wants the sentence naming the problem, so TensorFlow's framing lines
    ("Graph execution error:", "Detected at node ...", stack frames, node tags,
    the Saver's generic preamble) are passed over. The type name when nothing
    is left.
    """
    message = getattr(err, "message", None) or str(err)
    for line in message.splitlines():
        line = line.strip()
        if line and not line.startswith(_TF_FRAMING):
            return line
    return type(err).__name__


_TF_FRAMING = ("Graph execution error:", "Detected at node", "Node:", "File ", "[[",
               "Original stack trace", "Restoring from checkpoint failed")


def run_main(main, parser, argv=None):
    """Parse `argv`, call `main(args)`, and turn a SegMentorError into one line.

    Ctrl-C outside a loop that handles it (graph building, data generation,
    a second Ctrl-C) also ends in one line rather than a traceback.
    Returns the process exit code so callers can `sys.exit` it: what `main`
    returns (a checker's "problems found" status), else 0.
    """
    args = parser.parse_args(argv)
    prog = parser.prog or "seg-mentor"
    try:
        status = main(args)
    except SegMentorError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return status or 0
