from gatekeeper.core.catalog import Classification, Crawler, Kind, Purpose
from gatekeeper.core.facts import RequestFacts
from gatekeeper.core.model import LimitKey, RateLimit
from gatekeeper.core.ratelimit import Bucket, bucket_key, client_network, take

GPTBOT = Crawler("GPTBot", "OpenAI", Purpose.AI_TRAINING, ("gptbot",), "GPTBot")


def _facts(ip: str) -> RequestFacts:
    return RequestFacts("GET", "example.com", "/", "", {}, ip, 0.0)


def test_new_bucket_starts_full_and_spends_one_token() -> None:
    bucket, result = take(None, rate=1.0, burst=3, now=100.0)
    assert result.allowed
    assert bucket == Bucket(2.0, 100.0)


def test_empty_bucket_denies_with_time_until_next_token() -> None:
    bucket = Bucket(0.25, 10.0)
    _, result = take(bucket, rate=0.5, burst=5, now=10.0)
    assert not result.allowed
    assert result.retry_after == 1.5  # (1 - 0.25) / 0.5


def test_bucket_refills_at_rate_up_to_burst() -> None:
    _, result = take(Bucket(0.0, 0.0), rate=2.0, burst=3, now=10.0)
    assert result.allowed
    assert result.remaining == 2.0  # refilled to 3, then one spent


def test_clock_going_backwards_never_adds_tokens() -> None:
    _, result = take(Bucket(0.0, 50.0), rate=1.0, burst=3, now=40.0)
    assert not result.allowed


def test_burst_requests_then_denied() -> None:
    bucket = None
    allowed = 0
    for _ in range(10):
        bucket, result = take(bucket, rate=0.001, burst=4, now=5.0)
        allowed += result.allowed
    assert allowed == 4


def test_bucket_keys_per_subject() -> None:
    cls = Classification(Kind.CRAWLER, GPTBOT)
    facts = _facts("198.51.100.23")
    key = {k: bucket_key("r", RateLimit(1, 1, k), facts, cls) for k in LimitKey}
    assert key[LimitKey.CRAWLER] == "r|crawler|GPTBot"
    assert key[LimitKey.OPERATOR] == "r|operator|OpenAI"
    assert key[LimitKey.CLIENT_IP] == "r|client_ip|198.51.100.23"
    assert key[LimitKey.CLIENT_NETWORK] == "r|client_network|198.51.100.0/24"


def test_client_network_is_slash_24_or_slash_64() -> None:
    assert client_network("203.0.113.200") == "203.0.113.0/24"
    assert client_network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
