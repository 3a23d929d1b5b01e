"""A TCP port for a launcher's rendezvous (`--main_process_port`, `--master_port`, a gloo `init_method`)."""

import socket


def free_port() -> int:
    """A port free on 127.0.0.1 right now: the OS picks it (bind to port 0), so parallel or repeated runs do not
    collide on a fixed number."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
