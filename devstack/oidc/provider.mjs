// A real OpenID Provider for the production profile and the tests: the OpenID-Certified
// `oidc-provider` package (pinned in package-lock.json), not a hand-made token issuer.
//
// Why it exists: the API's OIDC verifier (aether_platform/auth.py) must be proven against a
// provider that behaves like a real one: discovery, a JWKS endpoint, the client_credentials
// grant with resource indicators issuing JWT access tokens, and keys that rotate.
//
// Usage: node provider.mjs --config clients.json --state-dir DIR [--host 127.0.0.1] [--port 0]
//   clients.json: {"audience": "https://api.example", "other_audiences": [], "token_ttl_seconds": 300,
//                  "clients": [{"client_id", "client_secret", "tenant_id": uuid} |
//                              {"client_id", "client_secret", "role": "operator"}]}
// Binds --port (default 0: any free port) and, when ready, prints ONE JSON line on stdout:
//   {"issuer", "jwks_uri", "token_endpoint", "port", "admin"}
// Access tokens are JWTs (RS256) with aud = the audience (an absolute URI, as RFC 8707 resource
// indicators must be; or one of other_audiences, when the client asks), and the client's tenant in the
// `tenant_id` claim, or `aether_role: "operator"`.
//
// Keys live in DIR/jwks.json (private, mode 0600), so a restart on the same port keeps the
// issuer and its keys. Rotation keeps the issuer URL: POST /admin/rotate?keep_old=1|0 with
// `Authorization: Bearer <DIR/admin-token>` builds a new Provider with a new signing key first
// in its key set (keeping the old public keys published, or dropping them) and swaps it in
// under the same HTTP server. The admin token is made at start and only ever written to that
// file; the admin endpoint answers on loopback only.
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { format, parseArgs } from 'node:util';

import { generateKeyPair, exportJWK } from 'jose';

// Every log line is one JSON object on stderr, like the platform's own logs (oidc-provider's
// warnings included); stdout carries only the ready line, and a reader that went away (the
// stack's launcher exits after start) is no error.
for (const [name, level] of [['log', 'info'], ['info', 'info'], ['warn', 'warning'], ['error', 'error']]) {
  console[name] = (...parts) => process.stderr.write(`${JSON.stringify({
    time: new Date().toISOString(), level, logger: 'oidc-provider', message: format(...parts),
  })}\n`);
}
process.stdout.on('error', () => {});
// Imported only now, so that the warnings it prints while loading go through the JSON console.
const { default: Provider, errors } = await import('oidc-provider');

const { values: args } = parseArgs({
  options: {
    config: { type: 'string' },
    'state-dir': { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '0' },
  },
});
if (!args.config || !args['state-dir']) {
  console.error('usage: node provider.mjs --config clients.json --state-dir DIR [--host H] [--port P]');
  process.exit(2);
}

const config = JSON.parse(readFileSync(args.config, 'utf8'));
const audience = config.audience;
if (!audience || !URL.canParse(audience)) {
  console.error('config: "audience" must be an absolute URI (RFC 8707), e.g. https://api.example');
  process.exit(2);
}
const audiences = new Set([audience, ...(config.other_audiences || [])]);
const ttl = Number(config.token_ttl_seconds || 300);
const byId = new Map();
for (const c of config.clients || []) {
  if (!c.client_id || !c.client_secret || (!c.tenant_id && c.role !== 'operator')) {
    console.error(`client ${JSON.stringify(c.client_id)}: needs client_id, client_secret and tenant_id or role "operator"`);
    process.exit(2);
  }
  byId.set(c.client_id, c);
}

const keysFile = join(args['state-dir'], 'jwks.json');
const adminTokenFile = join(args['state-dir'], 'admin-token');

async function newKey() {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true, modulusLength: 2048 });
  const jwk = await exportJWK(privateKey);
  return { ...jwk, kid: randomBytes(9).toString('base64url'), alg: 'RS256', use: 'sig' };
}

function saveKeys(keys) {
  writeFileSync(keysFile, JSON.stringify({ keys }), { mode: 0o600 });
}

function build(issuer, keys) {
  const provider = new Provider(issuer, {
    clients: [...byId.values()].map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    })),
    jwks: { keys },
    ttl: { ClientCredentials: ttl },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // A client that names no resource gets a token for the API.
        defaultResource: async (_ctx, _client, oneOf) => oneOf || audience,
        getResourceServerInfo: async (_ctx, resource) => {
          if (!audiences.has(resource)) throw new errors.InvalidTarget();
          return { scope: 'crm', audience: resource, accessTokenTTL: ttl, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
        },
      },
    },
    extraTokenClaims: async (_ctx, token) => {
      const c = byId.get(token.clientId);
      if (!c) return undefined;
      return c.role === 'operator' ? { aether_role: 'operator' } : { tenant_id: c.tenant_id };
    },
  });
  // Only the error itself is reported, never the request (which carries client secrets).
  provider.on('server_error', (_ctx, err) => console.error(`oidc-provider server_error: ${err.name}: ${err.message}`));
  return provider;
}

let keys;
if (existsSync(keysFile)) {
  keys = JSON.parse(readFileSync(keysFile, 'utf8')).keys;
} else {
  keys = [await newKey()];
  saveKeys(keys);
}
const adminToken = randomBytes(24).toString('base64url');
writeFileSync(adminTokenFile, adminToken, { mode: 0o600 });

let current = null; // the Provider serving requests; replaced whole on rotation

function isAdmin(req) {
  const remote = req.socket.remoteAddress || '';
  if (!['127.0.0.1', '::1', '::ffff:127.0.0.1'].includes(remote)) return false;
  const got = Buffer.from((req.headers.authorization || '').replace(/^Bearer /, ''));
  const want = Buffer.from(adminToken);
  return got.length === want.length && timingSafeEqual(got, want);
}

async function admin(req, res, url) {
  if (!isAdmin(req)) {
    res.writeHead(403).end();
    return;
  }
  if (req.method === 'POST' && url.pathname === '/admin/rotate') {
    const keepOld = url.searchParams.get('keep_old') !== '0';
    const key = await newKey();
    // The newest key comes first: oidc-provider signs with the first key that fits.
    keys = keepOld ? [key, ...keys] : [key];
    saveKeys(keys);
    current = build(current.issuer, keys);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kid: key.kid, kids: keys.map((k) => k.kid) }));
    return;
  }
  res.writeHead(404).end();
}

const server = createServer((req, res) => {
  const url = new URL(req.url, 'http://local');
  if (url.pathname.startsWith('/admin/')) {
    admin(req, res, url).catch((err) => {
      console.error(`admin request failed: ${err.name}: ${err.message}`);
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
    return;
  }
  current.callback()(req, res);
});

server.listen(Number(args.port), args.host, () => {
  const { port } = server.address();
  const host = args.host.includes(':') ? `[${args.host}]` : args.host;
  const issuer = `http://${host}:${port}`;
  current = build(issuer, keys);
  process.stdout.write(`${JSON.stringify({
    issuer, jwks_uri: `${issuer}/jwks`, token_endpoint: `${issuer}/token`, port, admin: adminTokenFile,
  })}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => server.close(() => process.exit(0)));
}
