"""Running model-written Python: the doctest examples of a prompt against the generated function,
in a separate, limited process.

Generated code is untrusted input. Each run is a fresh `python -I` process (no user site, no
PYTHON* variables) in an empty temporary working folder, with resource limits set before the code
starts (address space, CPU seconds, size of any file it writes, open files), a wall-clock timeout
that kills its whole process group, and no network: in a new network namespace
(`unshare --net`, Linux, where the kernel allows unprivileged user namespaces), else by replacing
the socket functions that connect before the code runs. That is a fence against accidents (a loop, a huge
allocation, a stray download or file), not a security boundary against code written to escape.

The examples are the `>>>` lines of the prompt's docstring (`doctest.DocTestParser`); the
generated code runs in a copy of the real module's namespace (so it may call the module's own
helpers), with the asked function removed first, so that only the generated definition can pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache

TIMEOUT_S = 10.0
MEMORY_BYTES = 1 << 30        # 1 GiB of address space
FILE_BYTES = 1 << 20          # no file it writes grows past 1 MiB

_RUNNER = r'''
import doctest, importlib, json, resource, socket, sys
payload = json.loads(sys.stdin.read())
for limit, value in payload["limits"].items():
    resource.setrlimit(getattr(resource, limit), (value, value))
namespace = {"__name__": "__generated__"}
if payload["module"]:
    try:
        namespace = dict(vars(importlib.import_module(payload["module"])))
    except Exception as error:
        print(json.dumps({"status": "error", "detail": f"module {payload['module']}: {error!r}"}))
        raise SystemExit(0)
if payload["patch_network"]:  # no network namespace here: take the connecting functions away instead
    def offline(*args, **kwargs):
        raise OSError("network access is disabled in the sandbox")
    socket.create_connection = socket.getaddrinfo = offline
    socket.socket.connect = socket.socket.connect_ex = socket.socket.sendto = offline
namespace.pop(payload["function"], None)
try:
    exec(compile(payload["code"], "<generated>", "exec"), namespace)
except BaseException as error:
    print(json.dumps({"status": "error", "detail": f"the code does not run: {type(error).__name__}: {error}"}))
    raise SystemExit(0)
defined = namespace.get(payload["function"])
if getattr(getattr(defined, "__code__", None), "co_filename", None) != "<generated>":
    print(json.dumps({"status": "error", "detail": f"the code does not define {payload['function']}"}))
    raise SystemExit(0)
test = doctest.DocTestParser().get_doctest(payload["examples"], namespace, payload["function"], "<prompt>", 0)
runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
report = []
runner.run(test, out=report.append)
failed, attempted = runner.summarize(verbose=False)
print(json.dumps({"status": "passed" if not failed else "failed", "attempted": attempted, "failed": failed,
                  "detail": "".join(report)[-600:]}))
'''


@dataclass(frozen=True)
class DoctestOutcome:
    """status: passed, failed, error (the code does not run or define the function), timeout."""

    status: str
    attempted: int = 0
    failed: int = 0
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def doctest_examples(text: str) -> str:
    """The `>>>` examples (with their expected output) of a prompt or docstring, as doctest text;
    "" when it has none."""
    import doctest

    examples = doctest.DocTestParser().get_examples(text)
    return "".join(f">>> {e.source.rstrip()}\n{e.want}" for e in examples)


@lru_cache(maxsize=1)
def network_namespace_works() -> bool:
    """Whether `unshare --user --net` can start a process here (Linux, user namespaces allowed)."""
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "--user", "--map-root-user", "--net", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_doctests(code: str, function: str, examples: str, module: str | None = None,
                 timeout_s: float = TIMEOUT_S, memory_bytes: int = MEMORY_BYTES) -> DoctestOutcome:
    """Run the doctest `examples` against `function` as defined by `code`, in the sandbox of the
    module docstring. `module`: the real module whose namespace the code runs in (None: a bare
    namespace). Never raises for anything the code does; the outcome says what happened."""
    limits = {"RLIMIT_AS": memory_bytes, "RLIMIT_CPU": int(timeout_s) + 1, "RLIMIT_FSIZE": FILE_BYTES,
              "RLIMIT_NOFILE": 256}
    isolated = network_namespace_works()
    payload = json.dumps({"code": code, "function": function, "examples": examples, "module": module,
                          "limits": limits, "patch_network": not isolated})
    command = [sys.executable, "-I", "-c", _RUNNER]
    if isolated:
        command = ["unshare", "--user", "--map-root-user", "--net", *command]
    with tempfile.TemporaryDirectory(prefix="generated-code-") as folder:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8"}
        process = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = process.communicate(payload, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.communicate()
            return DoctestOutcome("timeout", detail=f"still running after {timeout_s:g} s")
    for line in reversed(out.strip().splitlines()):
        try:
            return DoctestOutcome(**json.loads(line))
        except (ValueError, TypeError):
            continue
    why = (err.strip().splitlines() or ["no output"])[-1]
    return DoctestOutcome("error", detail=f"the sandbox process ended with status {process.returncode}: {why[:300]}")
