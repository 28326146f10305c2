"""Downloads with timeouts and retries, complete or not at all.

Authors
-------
 * speechbrain-mrl developers
"""
import logging
import os
import pathlib
import shutil
import time
import urllib.request

from speechbrain_mrl.files import atomic_output

__all__ = ["download"]

logger = logging.getLogger(__name__)


def download(url, dest, timeout=None, retries=None, backoff=2.0, hint=""):
    """Downloads ``url`` to ``dest`` through a temporary file, with timeouts and retries.

    Arguments
    ---------
    url : str
        ``http(s)://`` or ``file://`` address.
    dest : str or os.PathLike
        Final path; only a complete download is renamed to it, and no partial
        file is left behind.
    timeout : float, optional
        Seconds to wait to connect and for each read (default
        ``$MRL_DOWNLOAD_TIMEOUT`` or 30).
    retries : int, optional
        Attempts in all (default ``$MRL_DOWNLOAD_RETRIES`` or 3); the wait
        between them grows as ``backoff ** attempt`` s.
    backoff : float
        Base of the exponential wait.
    hint : str
        Added to the error message (e.g. how to pass a local copy instead).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OSError
        Naming the URL and the last error once every attempt failed.
    """
    timeout = float(os.environ.get("MRL_DOWNLOAD_TIMEOUT", 30) if timeout is None else timeout)
    retries = max(1, int(os.environ.get("MRL_DOWNLOAD_RETRIES", 3) if retries is None else retries))
    dest = pathlib.Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    error = None
    for attempt in range(retries):
        if attempt:
            time.sleep(backoff ** attempt)
        try:
            with atomic_output(dest) as tmp, open(tmp, "wb") as out, \
                    urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
                shutil.copyfileobj(resp, out)
            return dest
        except OSError as err:  # URLError, timeouts and resets are OSErrors
            error = err
            logger.warning("download of %s failed (attempt %d of %d): %s", url, attempt + 1,
                           retries, err)
    raise OSError(f"could not download {url} after {retries} attempts ({error})"
                  + (f"; {hint}" if hint else ""))
