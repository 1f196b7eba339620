"""
Headless Chromium for the browser tests: Debian's C{chromium}, driven by
Selenium through Debian's C{chromium-driver}.  Nothing is ever downloaded:
both paths are given to Selenium, so Selenium Manager is never asked for
a driver or a browser (and C{SE_OFFLINE} forbids it the network anyway).

Every method of L{Browser} blocks.  A test whose pages are served by the
reactor of its own process calls them from a thread
(L{twisted.internet.threads.deferToThread}, as L{Browser.script} does), so
the reactor keeps serving while the browser waits for it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import tempfile
import warnings
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

__all__ = ["CHROMIUM", "CHROMEDRIVER", "Browser", "unavailable"]

CHROMIUM = os.environ.get("CUCKOODIST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CUCKOODIST_CHROMEDRIVER", "/usr/bin/chromedriver")

#: What to do where the browser is missing.
INSTALL_HINT = (
    "install Debian's chromium and chromium-driver (as root: apt-get install chromium chromium-driver; "
    "bash scripts/test does that itself when run as root or with sudo)"
)


def unavailable() -> str | None:
    """
    Why the browser tests cannot run here, or L{None} when they can: the
    reason for C{SkipTest}, naming what is missing and how to install it.
    """
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        return f"no headless browser: {' and '.join(missing)} not found; {INSTALL_HINT}"
    if importlib.util.find_spec("selenium") is None:
        return "the Python package selenium is not installed: bash scripts/test installs requirements-test.txt into .venv"
    return None


class Browser:
    """
    One headless Chromium, with a profile of its own in a temporary
    directory that L{quit} removes.

    @ivar driver: the Selenium C{WebDriver}.
    """

    def __init__(self, driver: Any, profile: str) -> None:
        self.driver = driver
        self.profile = profile

    @classmethod
    def start(cls, width: int = 1400, height: int = 1000) -> "Browser":
        """
        Start chromedriver and a headless Chromium (blocking).
        """
        os.environ.setdefault("SE_OFFLINE", "true")
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        profile = tempfile.mkdtemp(prefix="cuckoodist-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless=new",
            f"--window-size={width},{height}",
            f"--user-data-dir={profile}",
            # /dev/shm is small in containers; the sandbox refuses root.
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            # Every page is on the loopback interface.
            "--no-proxy-server",
        ):
            options.add_argument(argument)
        if os.getuid() == 0:
            options.add_argument("--no-sandbox")
        # chromedriver is on the loopback interface too: never through an
        # $http_proxy.  (Deprecated in favour of a longer way to say it.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            options.ignore_local_proxy_environment_variables()
        service = Service(executable_path=CHROMEDRIVER, log_output=os.path.join(profile, "chromedriver.log"))
        try:
            driver = webdriver.Chrome(service=service, options=options)
        except BaseException:
            _stop_service(service)
            _kill_profile_processes(profile)
            shutil.rmtree(profile, ignore_errors=True)
            raise
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(30)
        return cls(driver, profile)

    def quit(self) -> None:
        """
        Close the browser and chromedriver (blocking), whatever state they
        are in: what C{quit} leaves behind is killed by process id, found
        by this browser's own profile directory.
        """
        try:
            self.driver.quit()
        except Exception:
            pass
        finally:
            _stop_service(self.driver.service)
            _kill_profile_processes(self.profile)
            shutil.rmtree(self.profile, ignore_errors=True)

    def screenshot(self, path: str) -> None:
        """
        Save the whole page, not only the window, as a PNG (blocking).
        """
        import base64

        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        })
        with open(path, "wb") as fp:
            fp.write(base64.b64decode(shot["data"]))

    def script(self, source: str, *args: Any) -> Deferred[Any]:
        """
        Run JavaScript in the page, from a thread.
        """
        return deferToThread(self.driver.execute_script, source, *args)


def _stop_service(service: Any) -> None:
    """
    Stop chromedriver, and kill it if it outlived that.
    """
    process = getattr(service, "process", None)
    try:
        service.stop()
    except Exception:
        pass
    if process is not None and process.poll() is None:
        process.kill()
        process.wait(10)


def _kill_profile_processes(profile: str) -> None:
    """
    Kill every process whose command line names C{profile}: the browser
    and its helpers, and no one else's.
    """
    needle = profile.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fp:
                cmdline = fp.read()
        except OSError:
            continue
        if needle in cmdline:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass
