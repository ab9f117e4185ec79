"""Reading the test S3 server through boto3, not through the code under test."""

from __future__ import annotations

import os


def bucket_keys(bucket_uri: str, prefix: str = "") -> list[str]:
    """Every object key in the bucket under ``prefix``, sorted."""
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket_uri.removeprefix("s3://"), Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))
