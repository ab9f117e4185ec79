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
