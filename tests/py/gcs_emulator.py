"""A Google Cloud Storage emulator on loopback for the gs:// store tests.

It is gcp-storage-emulator (PyPI, pinned in requirements.txt) with its objects in memory,
plus the part of GCS's XML API that the `object_store` crate speaks and that emulator
lacks: listing a bucket (ListObjectsV2, `GET /BUCKET?list-type=2`), a PUT that answers with
an ETag, a GET that answers with ETag and Last-Modified, and XML multipart uploads (`POST ?uploads`, `PUT ?partNumber&uploadId`,
`POST ?uploadId`, `DELETE ?uploadId`). Objects land in the emulator's own storage, so its
JSON API (`/storage/v1/b/BUCKET/o`, `/download/storage/v1/...`) reads back exactly what
was written, independently of this XML layer.

    python gcs_emulator.py [--host 127.0.0.1] [--port 0]

prints `listening on HOST:PORT` once it accepts connections, and serves until
killed. `GET /_alldocs/stats` answers JSON counts: whole PUTs, multipart uploads
completed, aborted, and still pending.
"""

import argparse
import hashlib
import json
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from email.utils import format_datetime
import xml.etree.ElementTree as ET
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse
from xml.sax.saxutils import escape

from gcp_storage_emulator import server as emulator
from gcp_storage_emulator.handlers import objects
from gcp_storage_emulator.server import create_server

STATS = {"puts": 0, "multipart_completed": 0, "multipart_aborted": 0}
UPLOADS = {}  # upload id -> {"bucket", "key", "parts": {number: bytes}}
LOCK = threading.Lock()


def _query(request):
    # parse_qs drops `uploads=` (a blank value) unless asked to keep it.
    return parse_qs(urlparse(request.full_url).query, keep_blank_values=True)


def _xml(response, status, body):
    response.status = status
    response.write_file(
        ('<?xml version="1.0" encoding="UTF-8"?>' + body).encode("utf-8"),
        "application/xml",
    )


def _no_such_bucket(response, bucket):
    _xml(
        response,
        HTTPStatus.NOT_FOUND,
        "<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist."
        f"</Message><BucketName>{escape(bucket)}</BucketName></Error>",
    )


def _store(request, response, storage, bucket, key, content):
    """Writes an object through the emulator's storage; its ETag and generation headers."""
    obj = objects._make_object_resource(
        request.base_url, bucket, key, "application/octet-stream", str(len(content))
    )
    obj = objects._checksums(content, obj)
    storage.create_file(bucket, key, content, obj)
    etag = '"' + hashlib.md5(content).hexdigest() + '"'
    response["ETag"] = etag
    response["x-goog-generation"] = obj["generation"]
    return etag


def list_objects(request, response, storage, *args, **kwargs):
    bucket = request.params["bucket_name"]
    query = _query(request)
    if query.get("list-type") != ["2"]:
        response.status = HTTPStatus.NOT_IMPLEMENTED
        return
    prefix = query.get("prefix", [""])[0]
    delimiter = query.get("delimiter", [None])[0]
    after = query.get("continuation-token", query.get("start-after", [""]))[0]
    max_keys = int(query.get("max-keys", ["1000"])[0])
    if storage.get_bucket(bucket) is None:
        return _no_such_bucket(response, bucket)
    files, _ = storage.get_file_list(bucket, prefix or None)
    keys, prefixes, contents = [], set(), []
    for obj in files:
        name = obj["name"]
        if name <= after:
            continue
        rest = name[len(prefix):]
        if delimiter and delimiter in rest:
            prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
            continue
        keys.append(name)
        if len(keys) > max_keys:
            break
        contents.append(
            f"<Contents><Key>{escape(name)}</Key><Size>{obj['size']}</Size>"
            f"<LastModified>{obj['updated']}</LastModified>"
            f"<ETag>\"{obj['etag']}\"</ETag></Contents>"
        )
    truncated = len(keys) > max_keys
    token = f"<NextContinuationToken>{escape(keys[max_keys - 1])}</NextContinuationToken>" if truncated else ""
    common = "".join(
        f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in sorted(prefixes)
    )
    _xml(
        response,
        HTTPStatus.OK,
        f"<ListBucketResult><Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"
        f"<KeyCount>{len(contents)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>"
        f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
        f"{''.join(contents)}{common}{token}</ListBucketResult>",
    )


def put_object(request, response, storage, *args, **kwargs):
    bucket, key = request.params["bucket_name"], request.params["object_id"]
    query = _query(request)
    content = request.data or b""
    if storage.get_bucket(bucket) is None:
        return _no_such_bucket(response, bucket)
    if "uploadId" in query:
        upload = UPLOADS.get(query["uploadId"][0])
        if upload is None or (upload["bucket"], upload["key"]) != (bucket, key):
            response.status = HTTPStatus.NOT_FOUND
            return
        upload["parts"][int(query["partNumber"][0])] = content
        response["ETag"] = '"' + hashlib.md5(content).hexdigest() + '"'
        return
    _store(request, response, storage, bucket, key, content)
    STATS["puts"] += 1


def post_object(request, response, storage, *args, **kwargs):
    bucket, key = request.params["bucket_name"], request.params["object_id"]
    query = _query(request)
    if storage.get_bucket(bucket) is None:
        return _no_such_bucket(response, bucket)
    if "uploads" in query:
        upload_id = uuid.uuid4().hex
        UPLOADS[upload_id] = {"bucket": bucket, "key": key, "parts": {}}
        return _xml(
            response,
            HTTPStatus.OK,
            f"<InitiateMultipartUploadResult><Bucket>{escape(bucket)}</Bucket>"
            f"<Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId>"
            "</InitiateMultipartUploadResult>",
        )
    if "uploadId" not in query:
        response.status = HTTPStatus.NOT_IMPLEMENTED
        return
    upload = UPLOADS.get(query["uploadId"][0])
    if upload is None or (upload["bucket"], upload["key"]) != (bucket, key):
        response.status = HTTPStatus.NOT_FOUND
        return
    chosen = []
    for part in ET.fromstring(request.data or b"").iter("Part"):
        number = int(part.findtext("PartNumber"))
        data = upload["parts"].get(number)
        etag = '"' + hashlib.md5(data).hexdigest() + '"' if data is not None else None
        if etag is None or part.findtext("ETag").strip() != etag:
            return _xml(response, HTTPStatus.BAD_REQUEST, "<Error><Code>InvalidPart</Code></Error>")
        chosen.append(data)
    del UPLOADS[query["uploadId"][0]]
    etag = _store(request, response, storage, bucket, key, b"".join(chosen))
    STATS["multipart_completed"] += 1
    _xml(
        response,
        HTTPStatus.OK,
        f"<CompleteMultipartUploadResult><Bucket>{escape(bucket)}</Bucket>"
        f"<Key>{escape(key)}</Key><ETag>{etag}</ETag></CompleteMultipartUploadResult>",
    )


def delete_object(request, response, storage, *args, **kwargs):
    bucket, key = request.params["bucket_name"], request.params["object_id"]
    query = _query(request)
    if "uploadId" in query:
        if UPLOADS.pop(query["uploadId"][0], None) is not None:
            STATS["multipart_aborted"] += 1
        response.status = HTTPStatus.NO_CONTENT
        return
    try:
        storage.delete_file(bucket, key)
        response.status = HTTPStatus.NO_CONTENT
    except Exception:
        response.status = HTTPStatus.NOT_FOUND


def get_object(request, response, storage, *args, **kwargs):
    """The emulator's download, with the ETag and Last-Modified headers GCS's XML API
    sends (and `object_store` requires of every GET)."""
    bucket, key = request.params["bucket_name"], request.params["object_id"]
    try:
        obj = storage.get_file_obj(bucket, key)
        response["ETag"] = '"' + hashlib.md5(storage.get_file(bucket, key)).hexdigest() + '"'
    except Exception:
        obj = None
    if obj is not None and obj.get("updated"):
        updated = datetime.fromisoformat(obj["updated"].replace("Z", "+00:00"))
        response["Last-Modified"] = format_datetime(updated.astimezone(timezone.utc), usegmt=True)
    return objects.download(request, response, storage, *args, **kwargs)


def stats(request, response, storage, *args, **kwargs):
    response.json(dict(STATS, multipart_pending=len(UPLOADS)))


def install_xml_api():
    # object_store percent-encodes every non-alphanumeric byte of the bucket name and the
    # key (`no%2Dsuch%2Dbucket`); the emulator's routes decode what they capture, once.
    *json_api, catch_all = emulator.HANDLERS
    assert catch_all[0].startswith("^/(?P<bucket_name>"), catch_all
    emulator.HANDLERS = (
        (r"^/_alldocs/stats$", {"GET": stats}),
        *json_api,
        (
            r"^/(?P<bucket_name>[-.%\w]+)/(?P<object_id>.*[^/]+)$",
            {
                "GET": get_object,
                "PUT": put_object,
                "POST": post_object,
                "DELETE": delete_object,
            },
        ),
        (r"^/(?P<bucket_name>[-.%\w]+)/?$", {"GET": list_objects}),
    )
    # One request at a time through the emulator (its storage is not thread-safe), but
    # connections are accepted while one is handled.
    handle = emulator.Router.handle

    def locked(self, method):
        with LOCK:
            handle(self, method)

    emulator.Router.handle = locked
    emulator.server.HTTPServer = ThreadingHTTPServer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    install_xml_api()
    gcs = create_server(args.host, args.port, in_memory=True)
    gcs.start()
    host, port = gcs._api._httpd.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
