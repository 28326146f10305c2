"""Downloads with timeouts and retries, complete or not at all, checked and resumable.

Authors
-------
 * speechbrain-mrl developers
"""
import glob
import hashlib
import http.client
import logging
import os
import pathlib
import time
import urllib.error
import urllib.parse
import urllib.request

from speechbrain_mrl.utils.files import atomic_output

__all__ = ["ChecksumError", "RedirectError", "download", "sha256_of"]

logger = logging.getLogger(__name__)


class ChecksumError(OSError):
    """A downloaded file whose SHA-256 is not the expected one (never retried)."""


class RedirectError(OSError):
    """A redirect to another host, or from HTTPS to HTTP, refused (never retried)."""


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to the same host and port only, never from HTTPS to HTTP."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if ((new.hostname, new.port) != (old.hostname, old.port)
                or (old.scheme == "https" and new.scheme != "https")):
            fp.close()
            raise RedirectError(f"{req.full_url} redirects to {newurl}: a redirect to another "
                                "host (or to plain HTTP) is refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(request, timeout, same_host):
    """``urlopen(request)``; with ``same_host``, through :class:`_SameHostRedirects`."""
    if not same_host:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
    return urllib.request.build_opener(_SameHostRedirects()).open(request, timeout=timeout)


def download(url, dest, timeout=None, retries=None, backoff=2.0, hint="", total_timeout=None,
             sha256=None, resume=False, same_host=False):
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
    sha256 : str, optional
        Expected SHA-256 (hex) of the whole file: a download that differs is
        refused (:class:`ChecksumError`, nothing kept) and not retried.
    resume : bool
        Keep what arrived in ``.<name>.part`` next to ``dest`` (across
        attempts and across runs) and ask the server for the rest (an HTTP
        ``Range`` request); a server that answers with the whole file
        (status 200) is read from the start. For large archives.
    same_host : bool
        Refuse a redirect to another host or port, or from HTTPS to HTTP
        (:class:`RedirectError`, not retried); redirects are followed
        anywhere otherwise.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ChecksumError
        When the file's SHA-256 is not ``sha256``.
    RedirectError
        With ``same_host``, for a redirect to another host.
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
            if resume:
                _fetch_resumable(url, dest, timeout, deadline, total_timeout, sha256, same_host)
                return dest
            with atomic_output(dest) as tmp:
                with open(tmp, "wb") as out, _open(url, timeout, same_host) as resp:
                    _copy(resp, out, deadline, total_timeout)
                _check_sha256(tmp, sha256, url)
            return dest
        except (ChecksumError, RedirectError):
            raise
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
    :func:`~speechbrain_mrl.utils.files.atomic_output`) last written over ``max_age`` s ago."""
    pattern = f".{glob.escape(dest.stem)}.{'?' * 8}.tmp{glob.escape(dest.suffix)}"
    for tmp in dest.parent.glob(pattern):
        try:
            if time.time() - tmp.lstat().st_mtime > max_age:
                tmp.unlink()
                logger.info("removed %s, left by a killed download", tmp)
        except FileNotFoundError:  # removed meanwhile by another download
            pass


def sha256_of(path):
    """SHA-256 (hex) of a file, read in chunks.

    Example
    -------
    >>> import tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = path.write_bytes(b"abc")
    >>> sha256_of(path)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path, expected, url):
    """Raises :class:`ChecksumError` (after removing ``path``) when its SHA-256 differs."""
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected.lower():
        os.remove(path)
        raise ChecksumError(f"{url}: the download's SHA-256 is {actual}, expected {expected}; "
                            "it was removed (a damaged or changed file: try again later)")


def _fetch_resumable(url, dest, timeout, deadline, total_timeout, sha256, same_host):
    """One attempt of a resumable download into ``.<name>.part``, renamed to ``dest`` when done."""
    part = dest.with_name(f".{dest.name}.part")
    if part.is_symlink():
        part.unlink()
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        resp = _open(request, timeout, same_host)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:  # 416: nothing left after offset (complete already?)
            raise
        logger.info("%s: the server has nothing after byte %d; checking %s", url, offset, part)
    else:
        with resp:
            start = _range_start(resp) if offset and resp.status == 206 else 0
            if start not in (0, offset):
                raise OSError(f"the server resumed at byte {start}, not {offset}")
            if offset and not start:
                logger.info("%s: the server sent the whole file; starting again", url)
            elif start:
                logger.info("%s: resuming after %d bytes", url, start)
            flags = (os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
                     | (os.O_APPEND if start else os.O_TRUNC))
            with os.fdopen(os.open(part, flags, 0o666), "wb") as out:
                _copy(resp, out, deadline, total_timeout)
    _check_sha256(part, sha256, url)
    os.replace(part, dest)


def _range_start(resp):
    """First byte of a 206 response (its ``Content-Range: bytes START-END/TOTAL``)."""
    value = resp.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        raise OSError(f"partial response without a usable Content-Range ({value!r})") from None
