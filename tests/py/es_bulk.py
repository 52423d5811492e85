"""Drive Shoal's Elasticsearch-compatible API with the official client.

    es_bulk.py URL INDEX

Prints one JSON object per line, each with an "op" field:
  {"op": "info", "version": "...", "tagline": "...", "ping": true}
  {"op": "bulk", "success": N, "errors": [...]}        index and create actions
  {"op": "bulk_error", "success": null, "errors": [...]} a batch with one bad document
                                                          (helpers.BulkIndexError)
The documents (all into INDEX):
  es-1  index   {"@timestamp": now, "message": "es doc one", "log.level": "warn", "user": "bob"}
  es-2  create  {"@timestamp": now, "message": "es doc two", "service": "es-app"}
  (no id) index {"message": "es doc three"}   (no timestamp: stamped on arrival)
  then, in a second bulk: es-4 {"message": "es doc four"} and
  es-bad {"timestamp": "yesterday", "message": "es doc bad"}, which must fail.
With ES_API_KEY set, the client sends it (`Authorization: ApiKey ...`); with
ES_CA_CERTS, an https:// URL is verified against that CA file.
Used by tests/tests/logs_shipping.rs and tests/tests/acl.rs.
"""

import datetime
import json
import os
import sys

from elasticsearch import Elasticsearch, helpers


def main():
    url, index = sys.argv[1], sys.argv[2]
    es = Elasticsearch(url, request_timeout=10, api_key=os.environ.get("ES_API_KEY"),
                       ca_certs=os.environ.get("ES_CA_CERTS"))
    info = es.info().body
    print(json.dumps({"op": "info", "version": info["version"]["number"], "tagline": info.get("tagline"),
                      "ping": es.ping()}), flush=True)

    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    actions = [
        {"_op_type": "index", "_index": index, "_id": "es-1",
         "_source": {"@timestamp": now, "message": "es doc one", "log.level": "warn", "user": "bob"}},
        {"_op_type": "create", "_index": index, "_id": "es-2",
         "_source": {"@timestamp": now, "message": "es doc two", "service": "es-app"}},
        {"_index": index, "message": "es doc three"},
    ]
    success, errors = helpers.bulk(es, actions)
    print(json.dumps({"op": "bulk", "success": success, "errors": errors}), flush=True)

    try:
        success, errors = helpers.bulk(es, [
            {"_index": index, "_id": "es-4", "message": "es doc four"},
            {"_index": index, "_id": "es-bad", "timestamp": "yesterday", "message": "es doc bad"},
        ])
        print(json.dumps({"op": "bulk_no_error", "success": success, "errors": errors}), flush=True)
    except helpers.BulkIndexError as error:
        print(json.dumps({"op": "bulk_error", "success": None, "errors": error.errors}), flush=True)


if __name__ == "__main__":
    main()
