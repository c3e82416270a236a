"""`bce-auth-v1` signing: Baidu's documented example and the reference vectors of protocol.md,
checked against both the client's signing and the mock's own verifier; then each canonical part."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import attrs
import pytest

from llmstreams.mock import bce_signature
from llmstreams.mock.bce_signature import SignedRequest
from llmstreams.qianfan.signing import (
    bce_authorization,
    bce_canonical_headers,
    bce_canonical_query_string,
    bce_signing_key,
    bce_timestamp,
    bce_uri_encode,
)

VECTOR_A_HEADERS = {
    "Host": "bj.bcebos.com",
    "Date": "Mon, 27 Apr 2015 16:23:49 +0800",
    "Content-Type": "text/plain",
    "Content-Length": "8",
    "Content-Md5": "NFzcPqhviddjRNnSOGo4rw==",
    "x-bce-date": "2015-04-27T08:23:49Z",
}

VECTOR_B_HEADERS = {
    "Content-Type": "application/json",
    "Host": "aip.baidubce.com",
    "Request_id": "sdk-py-0.4.12.3-abcdefghijklmnop",
    "x-bce-date": "2024-01-01T00:00:00Z",
}


# Baidu's worked example (BOS UploadPart), "认证字符串生成示例" in "生成认证字符串",
# https://cloud.baidu.com/doc/Reference/s/njwvz1yfu. The final Authorization header is quoted
# on Baidu's page https://cloud.baidu.com/doc/Reference/s/Gjwvz1xez-en (read for this test).
# The canonical request and signing key are that example's intermediate values as other
# projects' tests quote them from the njwvz1yfu page (whose example section we could not read
# ourselves); the signature below ties them to the quoted header.
BAIDU_ACCESS_KEY = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
BAIDU_SECRET_KEY = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
BAIDU_TIMESTAMP = "2015-04-27T08:23:49Z"
BAIDU_PATH = "/v1/test/myfolder/readme.txt"
BAIDU_QUERY = {"partNumber": "9", "uploadId": "a44cc9bab11cbd156984767aad637851"}
BAIDU_PREFIX = "bce-auth-v1/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/2015-04-27T08:23:49Z/1800"
BAIDU_CANONICAL_REQUEST = "\n".join(
    [
        "PUT",
        "/v1/test/myfolder/readme.txt",
        "partNumber=9&uploadId=a44cc9bab11cbd156984767aad637851",
        "content-length:8",
        "content-md5:NFzcPqhviddjRNnSOGo4rw%3D%3D",
        "content-type:text%2Fplain",
        "host:bj.bcebos.com",
        "x-bce-date:2015-04-27T08%3A23%3A49Z",
    ]
)
BAIDU_SIGNING_KEY = "1d5ce5f464064cbee060330d973218821825ac6952368a482a592e6615aef479"
BAIDU_SIGNATURE = "d74a04362e6a848f5b39b15421cb449427f419c95a480fd6b8cf9fc783e2999e"
BAIDU_AUTHORIZATION = f"{BAIDU_PREFIX}//{BAIDU_SIGNATURE}"


def baidu_request(**changes: str) -> SignedRequest:
    return SignedRequest(
        method=changes.get("method", "PUT"),
        path=changes.get("path", BAIDU_PATH),
        query=tuple(BAIDU_QUERY.items()),
        headers=tuple(VECTOR_A_HEADERS.items()),
    )


def test_baidu_example_client_signing_key_and_authorization() -> None:
    assert bce_signing_key(
        access_key=BAIDU_ACCESS_KEY, secret_access_key=BAIDU_SECRET_KEY,
        timestamp=BAIDU_TIMESTAMP, expiration_seconds=1800,
    ) == BAIDU_SIGNING_KEY
    assert bce_canonical_query_string(BAIDU_QUERY) == BAIDU_CANONICAL_REQUEST.split("\n")[2]
    assert bce_canonical_headers(VECTOR_A_HEADERS) == "\n".join(
        BAIDU_CANONICAL_REQUEST.split("\n")[3:]
    )
    assert bce_authorization(
        access_key=BAIDU_ACCESS_KEY, secret_access_key=BAIDU_SECRET_KEY, method="PUT",
        path=BAIDU_PATH, query=BAIDU_QUERY, headers=VECTOR_A_HEADERS, timestamp=BAIDU_TIMESTAMP,
    ) == BAIDU_AUTHORIZATION


def test_baidu_example_mock_verifier_parts() -> None:
    assert bce_signature.auth_string_prefix(BAIDU_ACCESS_KEY, BAIDU_TIMESTAMP, 1800) == BAIDU_PREFIX
    assert bce_signature.signing_key(BAIDU_SECRET_KEY, BAIDU_PREFIX) == BAIDU_SIGNING_KEY
    assert bce_signature.canonical_request(baidu_request(), ()) == BAIDU_CANONICAL_REQUEST


def test_baidu_example_mock_verifier_accepts_the_documented_header_only() -> None:
    parts = bce_signature.parse_authorization(BAIDU_AUTHORIZATION)
    assert parts is not None
    assert bce_signature.signature_matches(parts, baidu_request(), BAIDU_SECRET_KEY)
    assert not bce_signature.signature_matches(parts, baidu_request(), "b" * 31 + "c")
    assert not bce_signature.signature_matches(parts, baidu_request(method="POST"), BAIDU_SECRET_KEY)
    assert not bce_signature.signature_matches(
        parts, baidu_request(path="/v1/test/myfolder/readme.md"), BAIDU_SECRET_KEY
    )


def test_vector_b_mock_verifier_accepts_the_protocol_md_header() -> None:
    parts = bce_signature.parse_authorization(
        "bce-auth-v1/test_access_key/2024-01-01T00:00:00Z/300/"
        "content-type;host;request_id;x-bce-date/"
        "579e24f747cd2795b089da8e481ecd2be5b54ad15de9dd8804535ee313f74c7f"
    )
    assert parts is not None
    request = SignedRequest(
        method="POST", path="/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/completions", query=(),
        headers=tuple(VECTOR_B_HEADERS.items()),
    )
    assert bce_signature.signature_matches(parts, request, "test_secret_key")
    unsigned_header_missing = attrs.evolve(request, headers=request.headers[1:])
    assert not bce_signature.signature_matches(parts, unsigned_header_missing, "test_secret_key")


def test_mock_uri_encoding_matches_the_documented_rule() -> None:
    assert bce_signature.uri_encode("AZaz09-._~") == "AZaz09-._~"
    assert bce_signature.uri_encode("a/b c+d=e&f*") == "a%2Fb%20c%2Bd%3De%26f%2A"
    assert bce_signature.uri_encode("/example/测试", keep_slash=True) == (
        "/example/%E6%B5%8B%E8%AF%95"  # Baidu's CanonicalURI example (hjwvz1y4f)
    )


def test_vector_a_default_signed_headers_listed_as_empty() -> None:
    authorization = bce_authorization(
        access_key="aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        secret_access_key="bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        method="PUT",
        path="/v1/test/myfolder/readme.txt",
        query={"partNumber": "9", "uploadId": "a44cc9bab11cbd156984767aad637851"},
        headers=VECTOR_A_HEADERS,
        timestamp="2015-04-27T08:23:49Z",
        expiration_seconds=1800,
    )
    assert authorization == (
        "bce-auth-v1/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/2015-04-27T08:23:49Z/1800//"
        "d74a04362e6a848f5b39b15421cb449427f419c95a480fd6b8cf9fc783e2999e"
    )


def test_vector_b_signing_key() -> None:
    signing_key = bce_signing_key(
        access_key="test_access_key",
        secret_access_key="test_secret_key",
        timestamp="2024-01-01T00:00:00Z",
        expiration_seconds=300,
    )
    assert signing_key == "7a5319e73ca90475a4014f674fd0be86438261ff9d35a1935b62720033378c73"


def test_vector_b_explicit_signed_headers() -> None:
    authorization = bce_authorization(
        access_key="test_access_key",
        secret_access_key="test_secret_key",
        method="POST",
        path="/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/completions",
        query={},
        headers=VECTOR_B_HEADERS,
        timestamp="2024-01-01T00:00:00Z",
        expiration_seconds=300,
        signed_headers=["Content-Type", "Host", "Request_id", "x-bce-date"],
    )
    assert authorization == (
        "bce-auth-v1/test_access_key/2024-01-01T00:00:00Z/300/"
        "content-type;host;request_id;x-bce-date/"
        "579e24f747cd2795b089da8e481ecd2be5b54ad15de9dd8804535ee313f74c7f"
    )


def test_signed_header_names_match_case_insensitively() -> None:
    def sign(signed_headers: list[str]) -> str:
        return bce_authorization(
            access_key="test_access_key",
            secret_access_key="test_secret_key",
            method="POST",
            path="/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/completions",
            query={},
            headers=VECTOR_B_HEADERS,
            timestamp="2024-01-01T00:00:00Z",
            expiration_seconds=300,
            signed_headers=signed_headers,
        )

    as_sent = sign(["Content-Type", "Host", "Request_id", "x-bce-date"])
    assert sign(["X-BCE-DATE", "request_ID", "host", "CONTENT-TYPE"]) == as_sent


def test_signing_a_header_that_is_not_sent_is_an_error() -> None:
    with pytest.raises(ValueError, match="content-md5"):
        bce_canonical_headers(VECTOR_B_HEADERS, ["Host", "Content-MD5"])


def test_signature_depends_on_method_path_and_secret() -> None:
    def sign(*, method: str = "POST", path: str = "/chat", secret: str = "sk") -> str:
        return bce_authorization(
            access_key="ak",
            secret_access_key=secret,
            method=method,
            path=path,
            query={},
            headers={"Host": "aip.baidubce.com"},
            timestamp="2024-01-01T00:00:00Z",
        )

    reference = sign()
    assert reference.startswith("bce-auth-v1/ak/2024-01-01T00:00:00Z/1800//")
    assert sign(method="post") == reference  # methods go upper-case on the wire
    assert sign(method="GET") != reference
    assert sign(path="/chat2") != reference
    assert sign(secret="sk2") != reference


def test_uri_encoding_keeps_only_unreserved_characters() -> None:
    assert bce_uri_encode("AZaz09-._~") == "AZaz09-._~"
    assert bce_uri_encode("a/b c+d=e&f*") == "a%2Fb%20c%2Bd%3De%26f%2A"
    assert bce_uri_encode("文心") == "%E6%96%87%E5%BF%83"


def test_canonical_query_is_sorted_and_encoded() -> None:
    query = {"uploadId": "x y", "partNumber": "9", "a/b": "c~d", "empty": ""}
    assert bce_canonical_query_string(query) == "a%2Fb=c~d&empty=&partNumber=9&uploadId=x%20y"


def test_canonical_query_leaves_out_authorization() -> None:
    query = {"authorization": "x", "Authorization": "y", "b": "2", "a": "1"}
    assert bce_canonical_query_string(query) == "a=1&b=2"


def test_canonical_query_sorts_the_encoded_pairs() -> None:
    # "A" (0x41) sorts before "a" (0x61) and "%" (0x25) before both.
    assert bce_canonical_query_string({"a": "1", "A": "2", "/": "3"}) == "%2F=3&A=2&a=1"


def test_canonical_headers_trim_lower_case_encode_and_sort() -> None:
    headers = {
        "Host": "  aip.baidubce.com ",
        "Content-Type": "application/json; charset=utf-8",
        " X-Bce-Request-Id ": "\tabc\n",
        "Content-Length": "17",
        "Accept": "text/event-stream",
    }
    assert bce_canonical_headers(headers) == "\n".join(
        [
            "content-length:17",
            "content-type:application%2Fjson%3B%20charset%3Dutf-8",
            "host:aip.baidubce.com",
            "x-bce-request-id:abc",
        ]
    )


def test_explicit_signed_headers_sign_exactly_those() -> None:
    headers = {"Host": "h", "Content-Type": "t", "x-bce-date": "d", "Request_id": "r"}
    assert bce_canonical_headers(headers, ["request_id", "HOST"]) == "host:h\nrequest_id:r"


def test_default_signed_headers_include_every_x_bce_header() -> None:
    headers = {"x-bce-date": "d", "X-Bce-Content-Sha256": "s", "Date": "ignored", "Accept": "no"}
    assert bce_canonical_headers(headers) == "x-bce-content-sha256:s\nx-bce-date:d"


def test_bce_timestamp_is_utc_seconds() -> None:
    beijing = timezone(timedelta(hours=8))
    assert bce_timestamp(datetime(2015, 4, 27, 16, 23, 49, 999_999, beijing)) == (
        "2015-04-27T08:23:49Z"
    )
    assert bce_timestamp(datetime(2024, 1, 1, tzinfo=UTC)) == "2024-01-01T00:00:00Z"


def test_bce_timestamp_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="aware"):
        bce_timestamp(datetime(2024, 1, 1))
