"""The live fixture itself: RenoPay and both stand-ins answer over real HTTP."""

import requests


def test_app_and_stand_ins_are_reachable(live):
    assert live.get("/healthz").json()["status"] == "ok"
    token = requests.get(
        f"{live.wx_url}/cgi-bin/token",
        params={
            "grant_type": "client_credential",
            "appid": live.creds.app_id,
            "secret": live.creds.app_secret,
        },
        timeout=5,
    ).json()
    assert token["expires_in"] == 7200
    # an unsigned call to the WeChat Pay stand-in is refused like the real one
    answer = requests.get(f"{live.pay_url}/v3/pay/transactions/id/1?mchid=1", timeout=5)
    assert answer.status_code == 401
