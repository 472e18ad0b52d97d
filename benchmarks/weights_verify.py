"""Cost of verifying a weights file: first sha256 vs the cached (size, mtime) stamp, and a
loopback download. Prints a table. Not run by CI.

    OMP_NUM_THREADS=1 python benchmarks/weights_verify.py --mb 256
"""
from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from anonymize import weights as W


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256, help="size of the synthetic weights file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["ANONYMIZE_HOME"] = str(root / "home")
        os.environ.pop("ANONYMIZE_WEIGHTS", None)
        serve = root / "serve"
        serve.mkdir()
        blob = serve / "w.bin"
        with open(blob, "wb") as f:
            f.write(b"PK\x03\x04")
            f.writelines(hashlib.sha256(str(i).encode()).digest() * 32768 for i in range(args.mb))
        sha = hashlib.sha256(blob.read_bytes()).hexdigest()
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(serve)))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/w.bin"
        man = root / "m.toml"
        man.write_text(f'[[weights]]\nname = "w"\nfilename = "w.bin"\npurpose = "bench"\nurls = ["{url}"]\n'
                       f'sha256 = "{sha}"\nsize = {blob.stat().st_size}\nlicence = "-"\nused_by = ["bench"]\n')
        m = W.load_manifest(man)
        rows = []
        t = time.perf_counter()
        W.fetch(["w"], manifest=m, timeout=30)
        rows.append(("fetch over loopback (download + sha256 + rename)", time.perf_counter() - t))
        stamp = W.cache_dir() / "state.json"
        stamp.unlink()
        t = time.perf_counter()
        W.weights_path("w", manifest=m)
        rows.append(("weights_path, cold (full sha256)", time.perf_counter() - t))
        t = time.perf_counter()
        for _ in range(100):
            W.weights_path("w", manifest=m)
        rows.append(("weights_path, warm (size+mtime stamp), per call", (time.perf_counter() - t) / 100))
        httpd.shutdown()
        size_mb = blob.stat().st_size / 2**20
        print(f"file size: {size_mb:.0f} MiB")
        print(f"{'operation':55s} {'seconds':>10s} {'MiB/s':>8s}")
        for name, sec in rows:
            rate = f"{size_mb / sec:8.0f}" if "per call" not in name else "       -"
            print(f"{name:55s} {sec:10.4f} {rate}")


if __name__ == "__main__":
    main()
