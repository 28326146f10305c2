"""Downloads with timeouts and retries, complete or not at all.

Authors
-------
 * speechbrain-mrl developers
"""
import glob
import http.client
import logging
import os
import pathlib
import time
import urllib.request

from speechbrain_mrl.files import atomic_output

__all__ = ["download"]

logger = logging.getLogger(__name__)


def download(url, dest, timeout=None, retries=None, backoff=2.0, hint="", total_timeout=None):
    """Downloads ``url`` to ``dest`` through a temporary file, with timeouts and retries.

    Arguments
    ---------
    url : str
        ``http(s)://`` or ``file://`` address.
    dest : str or os.PathLike
        Final path; only a complete download (as long as the server's
        ``Content-Length`` says) is renamed to it, and no partial file is left
        behind. Temporary files of ``dest`` that a killed download left are
        removed once older than ``timeout + total_timeout`` (no download with
        the same limits still writes them).
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
    total_timeout : float, optional
        Seconds the whole download may take, retries included (default
        ``$MRL_DOWNLOAD_TOTAL_TIMEOUT`` or 3600): a server that trickles the
        body, each read within ``timeout``, is given up then (checked after
        each read of the body, so at most ``timeout`` later; connecting and
        the response headers are bounded by ``timeout`` per read only).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OSError
        Naming the URL and the last error once every attempt failed or the
        time was up.
    """
    timeout = float(os.environ.get("MRL_DOWNLOAD_TIMEOUT", 30) if timeout is None else timeout)
    total_timeout = float(os.environ.get("MRL_DOWNLOAD_TOTAL_TIMEOUT", 3600)
                          if total_timeout is None else total_timeout)
    retries = max(1, int(os.environ.get("MRL_DOWNLOAD_RETRIES", 3) if retries is None else retries))
    dest = pathlib.Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(dest, timeout + total_timeout)
    deadline = time.monotonic() + total_timeout
    error = None
    for attempt in range(1, retries + 1):
        try:
            with atomic_output(dest) as tmp, open(tmp, "wb") as out, \
                    urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
                _copy(resp, out, deadline, total_timeout)
            return dest
        except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, cut short
            error = err
            logger.warning("download of %s failed (attempt %d of %d): %s", url, attempt,
                           retries, err)
        wait = backoff ** attempt
        if attempt == retries or time.monotonic() + wait >= deadline:
            break
        time.sleep(wait)
    raise OSError(f"could not download {url} after {attempt} attempts ({error})"
                  + (f"; {hint}" if hint else ""))


def _copy(resp, out, deadline, total_timeout):
    """Copies the body of ``resp`` to ``out``, one network read at a time, until ``deadline``.

    Raises ``TimeoutError`` past the deadline and ``OSError`` when fewer bytes
    arrive than the ``Content-Length`` header announced.
    """
    size = resp.headers.get("Content-Length")
    received = 0
    while chunk := resp.read1(1 << 16):  # read1: returns what one read gives, never waits to fill
        out.write(chunk)
        received += len(chunk)
        if time.monotonic() > deadline:
            raise TimeoutError(f"incomplete after the total timeout of {total_timeout:g} s "
                               f"({received} bytes received; $MRL_DOWNLOAD_TOTAL_TIMEOUT)")
    if size is not None and received != int(size):
        raise OSError(f"connection closed after {received} of {size} bytes")


def _remove_stale_temporaries(dest, max_age):
    """Removes the temporary files of ``dest`` (``.<stem>.XXXXXXXX.tmp<suffix>``, see
    :func:`~speechbrain_mrl.files.atomic_output`) last written over ``max_age`` s ago."""
    pattern = f".{glob.escape(dest.stem)}.{'?' * 8}.tmp{glob.escape(dest.suffix)}"
    for tmp in dest.parent.glob(pattern):
        try:
            if time.time() - tmp.lstat().st_mtime > max_age:
                tmp.unlink()
                logger.info("removed %s, left by a killed download", tmp)
        except FileNotFoundError:  # removed meanwhile by another download
            pass
