'use strict';
// An idle bare Node for the memory baseline: loads what a sandbox bootstrap loads (the module
// loader, vm, net for its socket, a compiled task), says it is ready with one byte, then waits.
const vm = require('vm');
const net = require('net');
const fn = vm.runInThisContext('(function (module) { module.exports = (d) => ({ok: true, n: d.n}); })');
const m = {exports: null};
fn(m);
m.exports({n: 1});
void net;
process.stdout.write('r');
setInterval(() => {}, 1 << 30);
