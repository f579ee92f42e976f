// A compiler that refuses what it cannot load by throwing: sources without "use strict" (a test fixture).
module.exports = function (source, helpers) {
  if (!source.includes('use strict')) throw new Error('strict: the source must start with "use strict"');
  return helpers.compile(source);
};
