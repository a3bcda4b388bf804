"""Sign-in and password reset are throttled: per account, per address, and with Redis down."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client

from swiftex import redis as swx_redis
from tests.factories import make_rep, org_with_providers

pytestmark = pytest.mark.django_db

LOCKED = "Too many failed sign-ins"


def sign_in(client: Client, username: str, password: str, *, url: str = "/accounts/login/"):
    return client.post(url, {"username": username, "password": password})


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.fixture
def reps():
    org, _ = org_with_providers()
    return make_rep(org, "ana"), make_rep(org, "bruno")


def test_an_account_is_locked_after_repeated_wrong_passwords_even_for_the_right_one(reps, settings):
    settings.LOGIN_FAILURES_PER_ACCOUNT = 3
    guesser = Client(REMOTE_ADDR="81.2.69.160")
    for guess in ("123456", "password", "ana2026"):
        page = sign_in(guesser, "ana", guess)
        assert page.status_code == 200 and "correct username and password" in page.content.decode()

    page = sign_in(Client(REMOTE_ADDR="81.2.69.161"), "ANA", "pw")  # the right password, any address, any case
    assert LOCKED in page.content.decode() and "Try again in 15 minutes" in page.content.decode()

    User.objects.filter(username="ana").update(is_staff=True)
    admin = Client(REMOTE_ADDR="81.2.69.161")
    assert LOCKED in sign_in(admin, "ana", "pw", url="/admin/login/").content.decode() and not signed_in(admin)

    other = Client(REMOTE_ADDR="81.2.69.160")
    assert sign_in(other, "bruno", "pw").status_code == 302 and signed_in(other)  # the address is not locked


def test_the_right_password_starts_the_accounts_count_again(reps, settings):
    settings.LOGIN_FAILURES_PER_ACCOUNT = 3
    for _ in range(2):
        client = Client()
        sign_in(client, "ana", "wrong")
        sign_in(client, "ana", "wrong")
        assert sign_in(client, "ana", "pw").status_code == 302 and signed_in(client)


def test_one_address_trying_many_accounts_is_stopped_and_others_are_not(reps, settings):
    settings.LOGIN_FAILURES_PER_ADDRESS = 4
    sprayer = Client(REMOTE_ADDR="2a00:1450:4001::1")
    for name in ("admin", "root", "ana", "sales"):
        sign_in(sprayer, name, "Summer2026!")
    same_network = Client(REMOTE_ADDR="2a00:1450:4001::abcd")  # the same /64
    page = sign_in(same_network, "bruno", "pw")
    assert LOCKED in page.content.decode() and not signed_in(same_network)
    elsewhere = Client(REMOTE_ADDR="2a00:1450:4002::1")
    assert sign_in(elsewhere, "bruno", "pw").status_code == 302


def test_behind_an_undeclared_proxy_only_accounts_are_counted(reps, settings):
    # Every sign-in arrives from the load balancer's private address: counting it would let
    # anyone lock every rep out with 50 wrong passwords.
    settings.LOGIN_FAILURES_PER_ADDRESS, settings.WEBFORM_TRUSTED_PROXIES = 2, 0
    balancer = Client(REMOTE_ADDR="10.0.0.5")
    for name in ("admin", "root", "sales"):
        sign_in(balancer, name, "guess")
    assert sign_in(balancer, "ana", "pw").status_code == 302

    settings.WEBFORM_TRUSTED_PROXIES = 1  # declared: the client's own address is counted again
    attacker = Client(REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="81.2.69.200")
    for name in ("admin", "root"):
        sign_in(attacker, name, "guess")
    assert LOCKED in sign_in(attacker, "bruno", "pw").content.decode()
    assert sign_in(Client(REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="81.2.69.201"), "bruno", "pw").status_code == 302


def test_every_count_has_its_expiry(reps):
    sign_in(Client(REMOTE_ADDR="81.2.69.160"), "ana", "wrong")
    redis = swx_redis.client()
    keys = [key for key in redis.scan_iter(match="*login-failures*")]
    assert len(keys) == 2 and all(0 < redis.ttl(key) <= 900 for key in keys)


def test_sign_in_stays_throttled_per_process_when_redis_is_down(reps, settings):
    settings.LOGIN_FAILURES_PER_ACCOUNT = 2
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}}
    swx_redis.breaker.reset()
    client = Client()
    sign_in(client, "ana", "wrong")
    sign_in(client, "ana", "wrong")
    assert LOCKED in sign_in(client, "ana", "pw").content.decode()
    assert not swx_redis.breaker.allow()


def test_password_reset_mails_are_capped_per_address_without_saying_so(reps, settings):
    settings.PASSWORD_RESETS_PER_HOUR = 2
    User.objects.filter(username="ana").update(email="ana@example.com")
    client = Client()
    answers = [client.post("/accounts/password_reset/", {"email": "ana@example.com"}) for _ in range(4)]
    assert {a.status_code for a in answers} == {302} and {a.url for a in answers} == {"/accounts/password_reset/done/"}
    assert len(mail.outbox) == 2
