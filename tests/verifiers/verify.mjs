// Verifies a visitord token with jose (https://github.com/panva/jose), as
// a site's Node backend would. Reads {"jwks", "token", "issuer",
// "audience", "now"?} as JSON on stdin; prints {"ok", "claims", "header",
// "error", "thumbprints"} (jose's RFC 7638 thumbprint of every key).
import { calculateJwkThumbprint, createLocalJWKSet, jwtVerify } from "jose";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const req = JSON.parse(input);
const thumbprints = await Promise.all(req.jwks.keys.map((k) => calculateJwkThumbprint(k)));
let out;
try {
  const { payload, protectedHeader } = await jwtVerify(req.token, createLocalJWKSet(req.jwks), {
    issuer: req.issuer,
    audience: req.audience,
    algorithms: ["EdDSA", "ES256"],
    currentDate: req.now === undefined ? undefined : new Date(req.now * 1000),
  });
  out = { ok: true, claims: payload, header: protectedHeader, thumbprints };
} catch (e) {
  out = { ok: false, error: `${e.code}: ${e.message}`, thumbprints };
}
process.stdout.write(JSON.stringify(out));
