// Builds the dashboard's front end (emulator/dashboard/web) into dist/dashboard: one bundle of
// Preact, uPlot and the pages (assets/app.js, with a source map), one stylesheet (ours and
// uPlot's, assets/app.css) and index.html. Everything the page loads comes from arraylab itself.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const web = join(root, 'emulator', 'dashboard', 'web');
const out = join(root, 'dist', 'dashboard');
const started = Date.now();
mkdirSync(join(out, 'assets'), { recursive: true });

await build({
  entryPoints: [join(web, 'main.tsx')],
  outfile: join(out, 'assets', 'app.js'),
  bundle: true,
  minify: true,
  sourcemap: 'linked',
  target: 'es2020',
  format: 'iife',
  platform: 'browser',
  jsx: 'automatic',
  jsxImportSource: 'preact',
  legalComments: 'linked',
  logLevel: 'warning',
});

// uPlot's own stylesheet first, so ours can adjust it.
const uplotCss = readFileSync(createRequire(import.meta.url).resolve('uplot/dist/uPlot.min.css'), 'utf8');
const css = await build({
  stdin: { contents: `${uplotCss}\n${readFileSync(join(web, 'style.css'), 'utf8')}`, loader: 'css', resolveDir: web },
  write: false,
  minify: true,
  target: ['chrome100', 'firefox100', 'safari15'],
  logLevel: 'warning',
});
writeFileSync(join(out, 'assets', 'app.css'), css.outputFiles[0].contents);
copyFileSync(join(web, 'index.html'), join(out, 'index.html'));

if (process.env.ARRAYLAB_BUILD_QUIET !== '1') console.log(`dashboard built in ${Date.now() - started} ms: ${out}`);
