// panva's oidc-provider (a certified OpenID Provider) configured for
// latchkey's interop test. Usage: node server.mjs REDIRECT_URI POST_LOGOUT_URI
// Listens on a free 127.0.0.1 port and prints "listening <issuer>" when ready.
import http from 'node:http';
import Provider from 'oidc-provider';

const [redirectUri, postLogoutUri] = process.argv.slice(2);
const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: 'latchkey',
      client_secret: 'interop-secret',
      redirect_uris: [redirectUri],
      post_logout_redirect_uris: [postLogoutUri],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    async findAccount(ctx, id) {
      return {
        accountId: id,
        async claims() {
          return { sub: id, email: `${id}@example.com`, email_verified: true, groups: ['admins', 'staff'] };
        },
      };
    },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
    scopes: ['openid', 'offline_access', 'email', 'groups'],
    features: {
      devInteractions: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      revocation: { enabled: true },
    },
    pkce: { required: () => true },
    rotateRefreshToken: true,
    cookies: { keys: ['latchkey-interop-test-only'] },
  });
  server.on('request', provider.callback());
  console.log(`listening ${issuer}`);
});
