#!/usr/bin/env bash
# Smoke test for provider.mjs: client_credentials (basic, post, Entra ".default" scope,
# private_key_jwt) and a curl-only authorization_code + PKCE login for a public client.
# Needs: node, curl. Run `npm ci` in this directory first (done here if node_modules is missing).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ -d "$HERE/node_modules/oidc-provider" ] || npm ci --prefix "$HERE" --no-audit --no-fund >&2

WORK="$(mktemp -d)"
PID=""
cleanup() {
  if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

AUD="api://influxion-test"
TID="11111111-2222-3333-4444-555555555555"

# Key pair for the private_key_jwt client; only the public half goes into the config.
node -e '
const c = require("node:crypto"); const fs = require("node:fs");
// PEM out of the generator, JWK from a re-imported key: see jwkOf in provider.mjs.
const { privateKey, publicKey } = c.generateKeyPairSync("rsa", { modulusLength: 2048,
  privateKeyEncoding: { type: "pkcs8", format: "pem" }, publicKeyEncoding: { type: "spki", format: "pem" } });
fs.writeFileSync(process.argv[1], privateKey);
fs.writeFileSync(process.argv[2], JSON.stringify({ ...c.createPublicKey(publicKey).export({ format: "jwk" }), kid: "jwt-client-1", use: "sig", alg: "RS256" }));
' "$WORK/jwt-client.pem" "$WORK/jwt-client.jwk.json"

cat >"$WORK/config.json" <<EOF
{
  "audience": "$AUD",
  "tenant_id": "$TID",
  "scope": "access_as_user",
  "clients": [
    {"client_id": "ci-signer", "client_secret": "s3cret-value-1234567890", "roles": ["Influxion.Sign"]},
    {"client_id": "no-role", "client_secret": "no-role-secret-1234567890", "roles": []},
    {"client_id": "cli-public", "public": true, "redirect_uris": ["http://127.0.0.1/callback"]},
    {"client_id": "keyclient", "client_secret": "keyclient-secret-1234567890",
     "redirect_uris": ["http://127.0.0.1:8402/login/oauth2/code/keyserver-client"],
     "post_logout_redirect_uris": ["http://127.0.0.1:8402/"]},
    {"client_id": "jwt-client", "jwks": {"keys": [$(cat "$WORK/jwt-client.jwk.json")]}, "roles": ["Influxion.Sign"]}
  ],
  "signing_keys": null
}
EOF

# Start the provider and read the ready line.
mkfifo "$WORK/ready"
OIDC_PORT=0 OIDC_CONFIG="$WORK/config.json" node "$HERE/provider.mjs" >"$WORK/ready" 2>"$WORK/provider.log" &
PID=$!
exec 3<"$WORK/ready"
if ! read -r -t 20 READY <&3; then echo "provider did not start" >&2; cat "$WORK/provider.log" >&2; exit 1; fi
ISSUER="$(node -e 'const r = JSON.parse(process.argv[1]); if (r.ready !== true) process.exit(1); console.log(r.issuer)' "$READY")"
echo "ready: $READY"

fail() { echo "FAIL: $*" >&2; echo "--- provider log ---" >&2; cat "$WORK/provider.log" >&2; exit 1; }

DISCOVERY="$(curl -fsS "$ISSUER/.well-known/openid-configuration")"
JWKS_URI="$(node -e 'console.log(JSON.parse(process.argv[1]).jwks_uri)' "$DISCOVERY")"
TOKEN_EP="$(node -e 'console.log(JSON.parse(process.argv[1]).token_endpoint)' "$DISCOVERY")"
[ "$(node -e 'console.log(JSON.parse(process.argv[1]).issuer)' "$DISCOVERY")" = "$ISSUER" ] || fail "discovery issuer mismatch"
JWKS="$(curl -fsS "$JWKS_URI")"
echo "discovery ok: token_endpoint=$TOKEN_EP jwks_uri=$JWKS_URI"

# check_token NAME TOKEN_RESPONSE JS_ASSERTION
# Verifies the access token's RS256 signature against the JWKS, prints the decoded
# payload, then evaluates JS_ASSERTION with `h` (header) and `p` (payload) in scope.
check_token() {
  node -e '
const c = require("node:crypto");
const [name, resp, jwks, issuer, assertion] = process.argv.slice(1);
const r = JSON.parse(resp);
if (!r.access_token) { console.error(name, "no access_token:", resp); process.exit(1); }
const [h64, p64, s64] = r.access_token.split(".");
const h = JSON.parse(Buffer.from(h64, "base64url")), p = JSON.parse(Buffer.from(p64, "base64url"));
const jwk = JSON.parse(jwks).keys.find((k) => k.kid === h.kid);
const ok = h.alg === "RS256" && jwk && c.verify("sha256", Buffer.from(`${h64}.${p64}`),
  c.createPublicKey({ key: jwk, format: "jwk" }), Buffer.from(s64, "base64url"));
if (!ok) { console.error(name, "bad signature/header", h); process.exit(1); }
console.log(`${name}: header=${JSON.stringify(h)}\n${name}: payload=${JSON.stringify(p)}`);
const now = Math.floor(Date.now() / 1000);
if (!(p.iss === issuer && p.exp > now && p.iat <= now + 5)) { console.error(name, "iss/exp/iat wrong"); process.exit(1); }
if (!eval(assertion)) { console.error(name, "assertion failed:", assertion); process.exit(1); }
' "$1" "$2" "$JWKS" "$ISSUER" "$3" || fail "$1"
}

UUID_RE='/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/'
APP_ASSERT="p.aud === '$AUD' && p.tid === '$TID' && p.ver === '2.0' && p.idtyp === 'app'
  && $UUID_RE.test(p.oid) && p.sub === p.oid && !('scope' in p) && !('scp' in p)"

# --- client_credentials, client_secret_basic
R="$(curl -sS -u 'ci-signer:s3cret-value-1234567890' -d grant_type=client_credentials "$TOKEN_EP")"
check_token cc-basic "$R" "$APP_ASSERT && p.azp === 'ci-signer' && JSON.stringify(p.roles) === '[\"Influxion.Sign\"]'"
OID1="$(node -e 'console.log(JSON.parse(Buffer.from(JSON.parse(process.argv[1]).access_token.split(".")[1], "base64url")).oid)' "$R")"

# --- client_credentials, client_secret_post
R="$(curl -sS -d grant_type=client_credentials -d client_id=ci-signer -d client_secret=s3cret-value-1234567890 "$TOKEN_EP")"
check_token cc-post "$R" "$APP_ASSERT && p.azp === 'ci-signer' && JSON.stringify(p.roles) === '[\"Influxion.Sign\"]' && p.oid === '$OID1'"

# --- client_credentials, Entra-style scope=<aud>/.default (accepted, ignored)
R="$(curl -sS -u 'ci-signer:s3cret-value-1234567890' -d grant_type=client_credentials --data-urlencode "scope=$AUD/.default" "$TOKEN_EP")"
check_token cc-default-scope "$R" "$APP_ASSERT && p.azp === 'ci-signer' && p.roles[0] === 'Influxion.Sign'"

# --- client_credentials with explicit resource=<aud> (RFC 8707)
R="$(curl -sS -u 'ci-signer:s3cret-value-1234567890' -d grant_type=client_credentials --data-urlencode "resource=$AUD" "$TOKEN_EP")"
check_token cc-resource "$R" "$APP_ASSERT && p.azp === 'ci-signer'"

# --- client without roles: no roles claim
R="$(curl -sS -u 'no-role:no-role-secret-1234567890' -d grant_type=client_credentials "$TOKEN_EP")"
check_token cc-no-role "$R" "$APP_ASSERT && p.azp === 'no-role' && !('roles' in p) && p.oid !== '$OID1'"

# --- wrong secret is rejected
CODE="$(curl -sS -o /dev/null -w '%{http_code}' -u 'ci-signer:wrong' -d grant_type=client_credentials "$TOKEN_EP")"
[ "$CODE" = 401 ] || fail "wrong secret gave HTTP $CODE"
echo "wrong-secret: HTTP 401 ok"

# --- client_credentials, private_key_jwt
ASSERTION="$(node -e '
const c = require("node:crypto"); const fs = require("node:fs");
const [pem, aud] = process.argv.slice(1); const now = Math.floor(Date.now() / 1000);
const b = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const input = `${b({ alg: "RS256", typ: "JWT", kid: "jwt-client-1" })}.${b({ iss: "jwt-client", sub: "jwt-client", aud, jti: c.randomUUID(), iat: now, exp: now + 300 })}`;
console.log(`${input}.${c.sign("sha256", Buffer.from(input), fs.readFileSync(pem)).toString("base64url")}`);
' "$WORK/jwt-client.pem" "$TOKEN_EP")"
R="$(curl -sS -d grant_type=client_credentials \
  -d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
  -d "client_assertion=$ASSERTION" "$TOKEN_EP")"
check_token cc-private-key-jwt "$R" "$APP_ASSERT && p.azp === 'jwt-client' && p.azpacr === '2' && p.roles[0] === 'Influxion.Sign'"

# --- authorization_code + PKCE for the public (native) client, curl only.
# pkce_login SCOPE LOGIN -> prints the token endpoint response
pkce_login() {
  local scope="$1" login="$2" jar="$WORK/cookies.$RANDOM" verifier challenge loc uid code state
  verifier="$(node -e 'console.log(require("node:crypto").randomBytes(32).toString("base64url"))')"
  challenge="$(node -e 'console.log(require("node:crypto").createHash("sha256").update(process.argv[1]).digest("base64url"))' -- "$verifier")"
  state="st$RANDOM"
  # Loopback redirect on an arbitrary port (registered without one): RFC 8252 section 7.3.
  local redirect="http://127.0.0.1:53682/callback"
  loc="$(curl -sS -o /dev/null -c "$jar" -b "$jar" -w '%{redirect_url}' -G "$ISSUER/auth" \
    --data-urlencode client_id=cli-public --data-urlencode response_type=code \
    --data-urlencode "redirect_uri=$redirect" --data-urlencode "scope=$scope" \
    --data-urlencode "state=$state" --data-urlencode "code_challenge=$challenge" \
    --data-urlencode code_challenge_method=S256)"
  # Walk the interactions: login page, then (only if shown) the consent page.
  for _ in 1 2 3 4; do
    case "$loc" in
      "$redirect"*) break ;;
      "$ISSUER"/interaction/*)
        uid="${loc##*/interaction/}"
        local page; page="$(curl -fsS -c "$jar" -b "$jar" "$loc")"
        if grep -q googleapis <<<"$page"; then echo "login page still references the internet" >&2; return 1; fi
        if grep -q 'name="prompt" value="login"' <<<"$page"; then
          form=(-d prompt=login --data-urlencode "login=$login" -d password=anything)
        elif grep -q 'name="prompt" value="consent"' <<<"$page"; then
          form=(-d prompt=consent)
        else
          echo "unexpected interaction page: $page" >&2; return 1
        fi
        loc="$(curl -sS -o /dev/null -c "$jar" -b "$jar" -w '%{redirect_url}' "${form[@]}" "$ISSUER/interaction/$uid")"
        # POST answers with a redirect to the resume URL (/auth/<uid>); follow it once.
        loc="$(curl -sS -o /dev/null -c "$jar" -b "$jar" -w '%{redirect_url}' "$loc")"
        ;;
      *) echo "unexpected redirect: '$loc'" >&2; return 1 ;;
    esac
  done
  case "$loc" in "$redirect"*) ;; *) echo "no redirect back to client: '$loc'" >&2; return 1 ;; esac
  code="$(node -e 'const u = new URL(process.argv[1]); if (u.searchParams.get("state") !== process.argv[2]) process.exit(1); console.log(u.searchParams.get("code"))' "$loc" "$state")"
  curl -sS -d grant_type=authorization_code -d client_id=cli-public --data-urlencode "code=$code" \
    --data-urlencode "redirect_uri=$redirect" --data-urlencode "code_verifier=$verifier" "$TOKEN_EP"
}

USER_ASSERT="p.aud === '$AUD' && p.tid === '$TID' && p.ver === '2.0' && p.azp === 'cli-public'
  && p.scp.split(' ').includes('access_as_user') && !('roles' in p) && !('scope' in p)
  && $UUID_RE.test(p.oid) && p.name === 'alice@example.test' && p.preferred_username === 'alice@example.test'"

R="$(pkce_login 'openid profile email offline_access access_as_user' alice@example.test)" || fail "pkce login"
check_token pkce "$R" "$USER_ASSERT"
node -e 'const r = JSON.parse(process.argv[1]); if (!r.id_token || !r.refresh_token) process.exit(1)' "$R" || fail "pkce: missing id_token/refresh_token: $R"
echo "pkce: id_token and refresh_token present"

# Refresh token keeps producing the same delegated JWT.
RT="$(node -e 'console.log(JSON.parse(process.argv[1]).refresh_token)' "$R")"
R2="$(curl -sS -d grant_type=refresh_token -d client_id=cli-public --data-urlencode "refresh_token=$RT" "$TOKEN_EP")"
check_token pkce-refresh "$R2" "$USER_ASSERT"

# Entra-style fully-qualified scope also works; scp is emitted in short form.
R="$(pkce_login "openid offline_access $AUD/access_as_user" alice@example.test)" || fail "pkce login (full scope)"
check_token pkce-full-scope "$R" "$USER_ASSERT && p.scp === 'access_as_user'"

# SIGTERM ends the provider cleanly.
kill -TERM "$PID"
wait "$PID" && RC=0 || RC=$?
PID=""
[ "$RC" = 0 ] || fail "provider exit code $RC after SIGTERM"
echo "provider exited with 0 after SIGTERM"
echo "SMOKE OK"
