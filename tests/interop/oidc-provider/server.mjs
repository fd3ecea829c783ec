// panva's oidc-provider (a certified OpenID Provider) configured for
// latchkey's interop test. Usage:
//   node server.mjs REDIRECT_URI POST_LOGOUT_URI [BACKCHANNEL_LOGOUT_URI]
// With the third argument, the client is registered for back-channel logout
// (with sid required, so ID tokens and logout tokens carry one). Listens on a free 127.0.0.1 port and prints "listening <issuer>" when ready.
import http from 'node:http';
import Provider from 'oidc-provider';

const [redirectUri, postLogoutUri, backchannelUri] = process.argv.slice(2);
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
      ...(backchannelUri
        ? { backchannel_logout_uri: backchannelUri, backchannel_logout_session_required: true }
        : {}),
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
      backchannelLogout: { enabled: true },
    },
    pkce: { required: () => true },
    rotateRefreshToken: true,
    cookies: { keys: ['latchkey-interop-test-only'] },
    // oidc-provider's outgoing requests (the back-channel logout POST) refuse
    // special-use addresses such as 127.0.0.1 (SSRF protection); the test's
    // relying party is on loopback, so this fetch goes without that guard.
    fetch(url, options) {
      const { dispatcher, ...rest } = options;
      return fetch(url, rest);
    },
  });
  provider.on('backchannel.error', (ctx, err, client) => {
    console.error(`back-channel logout to ${client.clientId} failed: ${err.message} ${err.cause}`);
  });
  provider.on('server_error', (ctx, err) => console.error(`server error: ${err.message}`));
  server.on('request', provider.callback());
  console.log(`listening ${issuer}`);
});
