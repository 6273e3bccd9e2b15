"""Where the figure and table scripts write, and how they fail. They never write over a file that is not theirs
(a table over a results file, a results file over another sweep's), and bad input ends in one line and a non-zero
exit, not a traceback. Plain Python (no numpy)."""
import argparse
import json
import os
import sys

KINDS = {".md": "a Markdown table", ".png": "a PNG figure", ".json": "a results file"}


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line (the usage itself is what --help prints)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help shows the usage)\n")


def output_path(path, suffix):
    """`path` checked before anything is written there: it ends in `suffix`, is no folder and lies in one that
    exists. A file of the same kind is written again (tables and figures are remade from their data)."""
    if not path.endswith(suffix):
        raise SystemExit(f"{path}: the output must be {KINDS[suffix]}, a name ending in {suffix}")
    if os.path.isdir(path):
        raise SystemExit(f"{path}: is a folder; name the file to write")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise SystemExit(f"{path}: no folder {folder} to write into")
    return path


def is_results(b):
    """Whether parsed JSON `b` is a sweep results file (results_bundle.py's format)."""
    return isinstance(b, dict) and str(b.get("format", "")).startswith("mue-sweep-results/")


def results_output(path, name):
    """output_path for sweep `name`'s results file: a file already there must be that sweep's results file."""
    output_path(path, ".json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                b = json.load(f)
            ours = is_results(b) and b.get("name") == name
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise SystemExit(f"{path}: exists and is not sweep {name}'s results file; not overwritten")
    return path


def run(main):
    """A script's main, whose bad input (an unreadable file, a wrong field, a value of the wrong type) raises: one
    line naming the exception and exit status 2. MUE_DEBUG=1 shows the traceback instead (a bug, not input)."""
    try:
        return main()
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        if os.environ.get("MUE_DEBUG"):
            raise
        text = str(e).splitlines()[0] if str(e) else ""
        print(f"{os.path.basename(sys.argv[0])}: error: {type(e).__name__}{': ' + text if text else ''} "
              f"(MUE_DEBUG=1 shows where)", file=sys.stderr)
        return 2
