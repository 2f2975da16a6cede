"""Creates S3 buckets that do not exist yet: `python create_buckets.py BUCKET...`.

The Job s3-create-buckets runs it (s3-buckets-job.yaml) against the platform's object store.
The endpoint is MLOPS_S3_ENDPOINT_URL; boto3 takes the credentials from AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY. It waits up to MLOPS_S3_WAIT_SECONDS (default 300) for the store to
answer. A bucket that already exists and is ours is left as it is, so running it again is
harmless. Exit status: 0 when every bucket exists, 1 otherwise, 2 for a usage error.
"""

import os
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

# Answers that mean the credentials are wrong: waiting longer would not change them.
REFUSED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"}
RETRY_EVERY_SECONDS = 3


def error_code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def wait_for_store(client, endpoint: str, wait_seconds: float) -> None:
    """Returns once the store answers a signed request; exits when it refuses the credentials."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            client.list_buckets()
            return
        except ClientError as error:
            if error_code(error) in REFUSED:
                sys.exit(f"the S3 store at {endpoint} refuses the credentials ({error_code(error)}): "
                         "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (Secret mlops-s3-credentials)")
            last = f"{error_code(error)}: {error}"
        except BotoCoreError as error:
            last = str(error)
        if time.monotonic() >= deadline:
            sys.exit(f"the S3 store at {endpoint} did not answer within {wait_seconds:.0f} s; last error: {last}")
        print(f"waiting for the S3 store at {endpoint}: {last}", flush=True)
        time.sleep(RETRY_EVERY_SECONDS)


def ensure_bucket(client, bucket: str) -> bool:
    try:
        client.create_bucket(Bucket=bucket)
        print(f"bucket {bucket}: created", flush=True)
        return True
    except ClientError as error:
        if error_code(error) == "BucketAlreadyOwnedByYou":
            print(f"bucket {bucket}: already there", flush=True)
            return True
        if error_code(error) == "BucketAlreadyExists":
            print(f"bucket {bucket}: exists but belongs to another account", file=sys.stderr, flush=True)
        else:
            print(f"bucket {bucket}: not created: {error}", file=sys.stderr, flush=True)
        return False


def main(buckets: list[str]) -> int:
    endpoint = os.environ.get("MLOPS_S3_ENDPOINT_URL", "")
    wait = os.environ.get("MLOPS_S3_WAIT_SECONDS", "300")
    if not buckets:
        print("usage: create_buckets.py BUCKET...", file=sys.stderr)
        return 2
    if not endpoint.startswith(("http://", "https://")):
        print(f"MLOPS_S3_ENDPOINT_URL must be an http:// or https:// URL, not '{endpoint}'", file=sys.stderr)
        return 2
    try:
        wait_seconds = float(wait)
    except ValueError:
        print(f"MLOPS_S3_WAIT_SECONDS must be a number of seconds, not '{wait}'", file=sys.stderr)
        return 2
    # One attempt per call: the wait loop above does the retrying, and says what it waits for.
    config = Config(connect_timeout=5, read_timeout=30, retries={"total_max_attempts": 1})
    client = boto3.client("s3", endpoint_url=endpoint, config=config)
    wait_for_store(client, endpoint, wait_seconds)
    results = [ensure_bucket(client, bucket) for bucket in buckets]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
