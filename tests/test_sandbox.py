"""The code sandbox: verdicts for right, wrong, looping, greedy and networked code; isolation of files and env.

Each test starts one short-lived `python -I` child; the slowest waits out a 1 s timeout.
"""

import doctest
import os
import re
import socket
import time

import pytest

import tasks.scoring.sandbox
from tasks.scoring.sandbox import SandboxResult, extract_code, run_python_tests

ADD = "def add(a, b):\n    return a + b\n"


def test_correct_solution_passes():
    result = run_python_tests(ADD, "assert add(1, 2) == 3\nassert add(-1, 1) == 0")
    assert isinstance(result, SandboxResult)
    assert (result.passed, result.status) == (True, "passed")
    assert 0 < result.duration_s < 5


def test_check_function_style_tests():
    tests = "def check(candidate):\n    assert candidate(2, 2) == 4\n\ncheck(add)\n"
    assert run_python_tests(ADD, tests).passed


def test_wrong_solution_fails_with_the_assertion_in_detail():
    result = run_python_tests("def add(a, b):\n    return a - b\n", "assert add(1, 2) == 3, 'add(1, 2) should be 3'")
    assert (result.passed, result.status) == (False, "failed")
    assert "AssertionError" in result.detail and "add(1, 2) should be 3" in result.detail
    assert "assert add(1, 2) == 3" in result.detail  # the failing test line is quoted


def test_broken_solution_is_an_error():
    result = run_python_tests("def add(a, b:\n    return a\n", "assert add(1, 2) == 3")
    assert result.status == "error" and "SyntaxError" in result.detail
    result = run_python_tests("raise RuntimeError('boom at import')", "pass")
    assert result.status == "error" and "boom at import" in result.detail


def test_infinite_loop_is_killed_as_timeout():
    start = time.monotonic()
    result = run_python_tests("while True:\n    pass\n", "pass", timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert (result.passed, result.status) == (False, "timeout")
    assert 1.0 <= elapsed < 2.0


def test_allocating_two_gigabytes_is_stopped_as_memory():
    result = run_python_tests("blob = bytearray(2 * 1024 ** 3)\n", "pass", memory_mb=512)
    assert (result.passed, result.status) == (False, "memory")
    assert "512 MB" in result.detail


@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    yield server
    server.close()


def test_socket_to_localhost_is_blocked(listener):
    port = listener.getsockname()[1]
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
    result = run_python_tests(code, "pass")
    assert (result.passed, result.status) == (False, "blocked")
    assert "socket" in result.detail
    with pytest.raises(socket.timeout):
        listener.accept()  # nothing ever connected


def test_catching_the_refusal_does_not_hide_it(listener):
    port = listener.getsockname()[1]
    code = f"import socket\ntry:\n    socket.socket().connect(('127.0.0.1', {port}))\nexcept Exception:\n    pass\n"
    result = run_python_tests(code, "assert True")
    assert result.status == "blocked"


@pytest.mark.parametrize(
    "code",
    [
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.system('true')",
        "import os\nos.fork()",
        "import os, signal\nos.kill(os.getppid(), signal.SIGTERM)",  # the parent must survive its children
    ],
)
def test_processes_and_signals_are_blocked(code):
    assert run_python_tests(code, "pass").status == "blocked"


def test_files_stay_inside_a_temp_dir_that_is_deleted(tmp_path):
    code = "import os\nwith open('out.txt', 'w') as f:\n    f.write('hi')\nWHERE = os.path.abspath('out.txt')\n"
    result = run_python_tests(code, "assert open('out.txt').read() == 'hi'\nassert False, 'WHERE=' + WHERE")
    written = re.search(r"WHERE=(\S+)", result.detail).group(1)
    sandbox_dir = os.path.dirname(written)
    assert os.path.basename(sandbox_dir).startswith("flywheel-sandbox-")
    assert not os.path.exists(sandbox_dir)  # removed with everything in it
    assert not os.path.exists("out.txt")  # the caller's cwd is untouched


def test_writing_outside_the_temp_dir_is_blocked(tmp_path):
    target = tmp_path / "escape.txt"
    result = run_python_tests(f"open({str(target)!r}, 'w').write('x')", "pass")
    assert result.status == "blocked"
    assert not target.exists()


def test_tempfile_module_writes_inside_the_sandbox():
    code = "import tempfile\nwith tempfile.NamedTemporaryFile() as f:\n    f.write(b'x')\n"
    assert run_python_tests(code, "pass").passed


def test_environment_does_not_leak_into_the_child(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_TEST_SECRET", "hunter2")
    assert run_python_tests("import os", "assert 'FLYWHEEL_TEST_SECRET' not in os.environ").passed


@pytest.mark.parametrize(
    "code,status",
    [
        ("import sys\nsys.exit(0)", "failed"),  # tests that never ran did not pass
        ("import os\nos._exit(0)", "error"),  # no verdict on the private pipe
        ("print('passed')\nprint('all tests passed')", "failed"),  # printing a verdict is not one
    ],
)
def test_early_exit_or_forged_output_never_passes(code, status):
    assert run_python_tests(code, "assert False").status == status


def test_stdin_is_empty_and_output_is_truncated():
    assert run_python_tests("x = input()", "pass").status == "error"  # EOF, not the sandbox's own job
    result = run_python_tests("print('y' * 1_000_000)", "pass")
    assert result.passed and len(result.detail) < 5000


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("Here you go:\n```python\ndef f():\n    return 1\n```\nHope it helps.", "def f():\n    return 1"),
        ("```py\nx = 1\n```", "x = 1"),
        ("```python\nx = 1\n```\nUsage:\n```python\nprint(x)\n```", "print(x)"),  # the last python fence
        ("```\nx = 2\n```", "x = 2"),  # an untagged fence
        ("```bash\npip install x\n```\n```\ny = 3\n```", "y = 3"),  # a non-python fence is not code to run
        ("```python\ndef f():\n    return 1", "def f():\n    return 1"),  # cut off before the closing fence
        ("def g():\n    return 2\n", "def g():\n    return 2"),  # no fence: the whole text
        ("", ""),
    ],
)
def test_extract_code(completion, expected):
    assert extract_code(completion) == expected


def test_extracted_code_runs():
    completion = "Sure!\n```python\n" + ADD + "```\n"
    assert run_python_tests(extract_code(completion), "assert add(2, 3) == 5").passed


def test_docstring_examples():
    assert doctest.testmod(tasks.scoring.sandbox).failed == 0
