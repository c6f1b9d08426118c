"""A headless Chromium driven over its DevTools protocol, for the dashboard's browser tests.

Just what those tests need: open a URL, evaluate JavaScript, take a screenshot, and list the
network requests a page made. Chromium is Debian's `chromium` package: `find_chromium()` finds
it, `install_chromium()` installs it where the tests run as root.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect


def find_chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def install_chromium() -> str | None:
    """Debian's chromium, installed with apt-get where the tests run as root (a CI machine or a
    fresh container starts without it); None where that is not possible or fails."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        if subprocess.run(cmd, env=env, capture_output=True, timeout=900).returncode != 0:
            return None
    return find_chromium()


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, binary: str, offline: bool = False):
        self.profile = tempfile.mkdtemp(prefix="jaxserve-chromium-")
        # No background networking: on a machine without internet its refused connections
        # only slow the browser down.
        args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-dev-shm-usage", "--disable-quic", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}", "--window-size=1400,1000"]
        if offline:   # every request that is not to a file goes to a closed port
            args += ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
        self.proc = subprocess.Popen(args + ["about:blank"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        port = self._devtools_port()
        page = next(t for t in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
                    if t["type"] == "page")
        self._connection = connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20)
        self.ws = self._connection.__enter__()
        self._ids = itertools.count(1)
        self.events: list[dict] = []
        self.call("Page.enable")
        self.call("Network.enable")

    def _devtools_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                return int(m.group(1))
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError("chromium did not start its DevTools server")

    def call(self, method: str, **params) -> dict:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=120))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def open(self, url: str, wait_for: str | None = None, timeout_s: float = 60) -> None:
        """Navigate, then wait until the JavaScript expression wait_for is truthy."""
        self.call("Page.navigate", url=url)
        if wait_for:
            self.wait(wait_for, timeout_s)

    def eval(self, expression: str, await_promise: bool = False):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=await_promise)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout_s: float = 60) -> None:
        """Poll until expression is truthy; an evaluation that fails because the page is being
        replaced (a reload, a navigation) counts as not yet."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.eval(f"!!({expression})"):
                    return
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_s} s for {expression}")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def requested_urls(self) -> list[str]:
        """URLs of every request the page made so far (Network.requestWillBeSent)."""
        self.call("Runtime.evaluate", expression="0")   # drain events queued before now
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._connection.__exit__(None, None, None)
        finally:
            self.proc.kill()
            self.proc.wait(30)
            shutil.rmtree(self.profile, ignore_errors=True)
