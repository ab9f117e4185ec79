"""Reading the test S3 server through boto3, not through the code under test."""

from __future__ import annotations

import os
import uuid


def bucket_keys(bucket_uri: str, prefix: str = "") -> list[str]:
    """Every object key in the bucket under ``prefix``, sorted."""
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket_uri.removeprefix("s3://"), Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def new_bucket(endpoint: str) -> str:
    """A new, empty bucket on the test server at ``endpoint``: its s3:// URI."""
    import boto3

    name = f"wganctl-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


class CuttableEndpoint:
    """A TCP relay on 127.0.0.1 in front of the test's S3 server, for a client to use as its
    endpoint: it goes away (open connections cut, new ones refused) the first time a request for a key
    containing ``cut_at`` starts, the way a stopped server looks to a client mid-upload, while the
    server behind it keeps what was stored (moto keeps objects in memory: stopping it would lose
    the evidence). `restore` brings it back on the same port."""

    def __init__(self, upstream: str, cut_at: bytes):
        import socket
        import threading

        self.upstream = upstream.removeprefix("http://").split(":")
        self.cut_at, self.cut, self.fired = cut_at, threading.Event(), False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def restore(self) -> None:
        self.cut.clear()

    def close(self) -> None:
        self.listener.close()
        self._cut_all()

    def _cut_all(self) -> None:
        for sock in self.open:
            try:
                sock.close()
            except OSError:
                pass
        self.open.clear()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()  # refused while cut
                continue
            server = socket.create_connection((self.upstream[0], int(self.upstream[1])))
            self.open += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source, sink, watch: bool) -> None:
        tail = b""
        try:
            while chunk := source.recv(65536):
                if watch and not self.fired and self.cut_at in tail + chunk:
                    self.fired = True  # once: after `restore`, the same key goes through
                    self.cut.set()
                    self._cut_all()  # the request dies mid-flight; the server never sees it whole
                    return
                tail = chunk[-len(self.cut_at):]
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.close()
                except OSError:
                    pass
