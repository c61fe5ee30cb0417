"""The body limit is per endpoint: `BaseHandler.max_body_size`, a class attribute an upload
endpoint raises for itself, else the API's `api.max_body_size`."""

from __future__ import annotations

import json
from unittest import mock

import tornado.httpclient
import tornado.testing
import tornado.web

from pvcd.api.app import make_context
from pvcd.api.auth import Tokens
from pvcd.api.base import BaseHandler
from pvcd.config.schema import ApiSection

TOKEN = "secret-token"


class Upload(BaseHandler):
    max_body_size = 200_000

    def post(self) -> None:
        self.reply({"size": len(self.request.body)})


class Ordinary(Upload):
    max_body_size = None


class TestBodyLimits(tornado.testing.AsyncHTTPTestCase):
    def get_app(self) -> tornado.web.Application:
        ctx = make_context(mock.MagicMock(), mock.MagicMock(), "node1", True,
                           Tokens.from_config([TOKEN]), api=ApiSection(max_body_size=65536))
        return tornado.web.Application([("/upload", Upload, {"ctx": ctx}),
                                        ("/ordinary", Ordinary, {"ctx": ctx})],
                                       cookie_secret="s" * 32)

    def post(self, path: str, size: int) -> tornado.httpclient.HTTPResponse:
        return self.fetch(path, method="POST", body=b"x" * size,
                          headers={"X-Api-Key": TOKEN, "Content-Type": "application/octet-stream"})

    def test_an_upload_endpoint_reads_more_than_the_default(self) -> None:
        response = self.post("/upload", 150_000)
        assert response.code == 200 and json.loads(response.body) == {"size": 150_000}
        assert self.post("/upload", 200_001).code == 413

    def test_other_endpoints_have_the_apis_limit(self) -> None:
        assert self.post("/ordinary", 65536).code == 200
        refused = self.post("/ordinary", 65537)
        assert refused.code == 413
        assert json.loads(refused.body) == {
            "message": "Request body too large: 65537 bytes; this endpoint accepts at most "
                       "65536 bytes"}
