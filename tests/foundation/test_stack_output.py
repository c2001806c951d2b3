"""What the stack shows on the terminal during long or failing steps.

The first Kafka fetch shows what Maven downloads (a counter of files and megabytes) instead of
minutes of silence; Maven's lines come from a real process printing them, in Maven 3's batch-mode
format, so the display is tested without a network fetch. A failed start quotes the last lines of
that start's log."""
from __future__ import annotations

import sys

from devstack import stack

MAVEN_LINES = """[INFO] Scanning for projects...
[INFO] Downloading from central: https://repo.maven.apache.org/maven2/org/apache/kafka/kafka_2.13/4.1.0/kafka_2.13-4.1.0.pom
[INFO] Downloaded from central: https://repo.maven.apache.org/maven2/org/apache/kafka/kafka_2.13/4.1.0/kafka_2.13-4.1.0.pom (4.2 kB at 61 kB/s)
[INFO] Downloaded from central: https://repo.maven.apache.org/maven2/org/apache/kafka/kafka_2.13/4.1.0/kafka_2.13-4.1.0.jar (6.5 MB at 9.1 MB/s)
[INFO] Downloaded from central: https://repo.maven.apache.org/maven2/org/scala-lang/scala-library/2.13.16/scala-library-2.13.16.jar (5,900 kB at 8 MB/s)
[INFO] BUILD SUCCESS
"""


def test_maven_download_lines_are_parsed():
    lines = MAVEN_LINES.splitlines()
    assert stack.maven_download(lines[1]) is None  # "Downloading" is not yet a file
    assert stack.maven_download(lines[3]) == ("kafka_2.13-4.1.0.jar", 6.5e6)
    assert stack.maven_download(lines[4]) == ("scala-library-2.13.16.jar", 5.9e6)


def test_progress_counts_files_and_keeps_the_log(tmp_path, capsys):
    log = tmp_path / "mvn.log"
    script = f"import sys; sys.stdout.write({MAVEN_LINES!r})"
    rc = stack.run_with_download_progress("kafka: fetching jars", [sys.executable, "-c", script], log,
                                          report_every=0)
    assert rc == 0
    assert log.read_text() == MAVEN_LINES
    out = capsys.readouterr().out
    # Not a terminal: plain lines, each with the running count, then the total.
    assert "kafka: fetching jars: 1 files, 0.0 MB" in out
    assert "kafka: fetching jars: 3 files, 12.4 MB in" in out


def test_a_failing_fetch_returns_its_exit_code(tmp_path):
    rc = stack.run_with_download_progress("x", [sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path / "l")
    assert rc == 3


def test_log_tail_quotes_only_this_start(tmp_path):
    log = tmp_path / "api.log"
    log.write_text("old crash\n\n==== 2026-01-01 00:00:00 starting: uvicorn\nline 1\nValueError: bad\n")
    assert stack.log_tail(log) == "\n    | line 1\n    | ValueError: bad"
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    assert stack.log_tail(log, lines=2) == "\n    | line 28\n    | line 29"
    assert stack.log_tail(tmp_path / "missing.log") == ""
    # The production profile's start marker is a JSON line; the tail still starts after it.
    log.write_text('{"message": "old"}\n\n{"logger": "aether.stack", "message": "==== 2026-01-01 00:00:00 '
                   'starting: uvicorn"}\n{"message": "line 1"}\n')
    assert stack.log_tail(log) == '\n    | {"message": "line 1"}'
