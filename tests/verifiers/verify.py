"""Verifies a visitord token with jwcrypto (https://github.com/latchset/jwcrypto),
as a site's Python backend would. Reads {"jwks", "token", "issuer",
"audience", "now"?} as JSON on stdin; prints {"ok", "claims", "header",
"error", "thumbprints"} (jwcrypto's RFC 7638 thumbprint of every key)."""

import json
import sys
import time

from jwcrypto import jwk, jwt

req = json.load(sys.stdin)
keys = jwk.JWKSet.from_json(json.dumps(req["jwks"]))
thumbprints = [jwk.JWK(**k).thumbprint() for k in req["jwks"]["keys"]]
if "now" in req:
    # jwcrypto checks exp and nbf against time.time(), with 60 s of leeway.
    time.time = lambda: req["now"]
try:
    t = jwt.JWT(
        jwt=req["token"],
        key=keys,
        algs=["EdDSA", "ES256"],
        check_claims={"iss": req["issuer"], "aud": req["audience"], "exp": None},
        expected_type="JWS",
    )
    out = {
        "ok": True,
        "claims": json.loads(t.claims),
        "header": json.loads(t.header),
        "thumbprints": thumbprints,
    }
except Exception as e:  # every failure is an answer here, not a crash
    out = {"ok": False, "error": f"{type(e).__name__}: {e}", "thumbprints": thumbprints}
print(json.dumps(out))
