module.exports = (d) => ({ok: true, n: d.n});
