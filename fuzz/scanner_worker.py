"""The scanner side: ``torchkeep.scan`` in a long-lived worker (``python fuzz/scanner_worker.py``).

One JSON request per line on stdin (``{"id": 1, "path": "..."}``), one answer per line on stdout with the
verdict, the findings, the imports, the error, whether ``scan`` raised, and whether torch got imported.
The fuzzer kills and restarts the worker when a scan runs past its time limit.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback


def main() -> int:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from oracle import watch_parent

    watch_parent()
    del sys.path[0]
    import torchkeep

    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        t0 = time.monotonic()
        ans: dict = {"id": req.get("id")}
        try:
            rep = torchkeep.scan(req["path"])
            ans.update(
                verdict=rep.verdict,
                imports=list(rep.imports),
                findings=[[f.severity, f.rule, f.module, f.name, f.why[:160]] for f in rep.findings][:40],
                error=rep.error,
                format=rep.format,
            )
        except BaseException as exc:  # scan promises never to raise for a bad file
            tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
            kind = type(exc).__name__ if type(exc).__module__ == "builtins" else f"{type(exc).__module__}.{type(exc).__name__}"
            ans.update(exception=f"{kind}: {exc}", traceback="".join(tb[-6:])[-2000:])
        ans["seconds"] = round(time.monotonic() - t0, 4)
        ans["imported_torch"] = "torch" in sys.modules
        out.write(json.dumps(ans) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
