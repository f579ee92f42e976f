// A compiler that never returns (a test fixture): the deploy's check runs past its time limit.
module.exports = function () {
  for (;;) {}
};
