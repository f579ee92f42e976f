// The workerd baseline's front door: one worker on the socket that hands each request to its tenant's
// worker (a service binding per tenant, named like the tenant), as taskcell's daemon routes by tenant.
export default {
  async fetch(req, env) {
    const tenant = new URL(req.url).pathname.split('/')[3];
    const worker = env[tenant];
    if (!worker) return new Response(JSON.stringify({error: {kind: 'not_found', message: tenant}}), {status: 404});
    return worker.fetch(req);
  },
};
