// An Auth0-style rule as a model: the source is one function (user, context, callback), as Auth0's rules were,
// with the free variables Auth0's runtime gave it: `configuration` (here the tenant's secrets), `auth0` (its
// metadata updates land in the returned user) and `UnauthorizedError`. The input is {user, context}; the
// result is {user, context} as the rule called back with them. docs/models.md shows this same compiler.
class UnauthorizedError extends Error {
  constructor(message) { super(message); this.name = 'UnauthorizedError'; }
}

module.exports = function (source, helpers) {
  const rule = source.trim().replace(/;+$/, '');
  const bind = helpers.compile(`module.exports = function (configuration, auth0, UnauthorizedError) {\nreturn (${rule}\n);\n};`);
  return function (data, ctx) {
    const user = (data && data.user) || {};
    const context = (data && data.context) || {};
    const auth0 = { users: {
      updateAppMetadata: async (id, metadata) => { user.app_metadata = metadata; },
      updateUserMetadata: async (id, metadata) => { user.user_metadata = metadata; },
    } };
    return new Promise((resolve, reject) => {
      bind(ctx.secrets, auth0, UnauthorizedError)(user, context, (err, u, c) =>
        err ? reject(err) : resolve({ user: u || user, context: c || context }));
    });
  };
};
