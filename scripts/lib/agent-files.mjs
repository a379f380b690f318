#!/usr/bin/env node
// What the host agent is made of at run time, for scripts/package-agent.sh: the compiled files of
// the agent/ and proto/ TypeScript projects (the outputs of their current sources, so a stale
// file left in dist/ by a deleted source is not shipped), the .proto files, and the npm packages
// those files import, with everything those packages depend on.
//
//   node scripts/lib/agent-files.mjs list           # JSON: { files, protos, imports, packages }
//   node scripts/lib/agent-files.mjs stage DIR      # copies them into DIR: agent/, proto/, node_modules/;
//                                                   # prints "NAME VERSION DIR LICENSE" for each package
//
// The packages are found by what the compiled JavaScript imports (static and dynamic imports of
// a literal name; node: built-ins left out), then by the dependencies in each package.json,
// resolved the way Node resolves them (the nearest node_modules upwards). An import that is not
// in the root package.json's "dependencies" is an error: it would be missing from a production
// install. Install-time-only dependencies are left out (INSTALL_ONLY).
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const PROJECTS = ['proto', 'agent'];

/** Needed only by a package's install script, never loaded at run time. */
const INSTALL_ONLY = new Set([
  'prebuild-install', // better-sqlite3's install step (fetch or build the .node); run time loads it with `bindings`
]);

function fail(message) {
  console.error(`agent-files: ${message}`);
  process.exit(1);
}

/** The compiled .js of each source of a TypeScript project, as its tsconfig.json says. */
function compiledFiles(project) {
  const configPath = join(REPO, project, 'tsconfig.json');
  const parsed = ts.getParsedCommandLineOfConfigFile(
    configPath,
    {},
    { ...ts.sys, onUnRecoverableConfigFileDiagnostic: (d) => fail(ts.flattenDiagnosticMessageText(d.messageText, '\n')) },
  );
  if (!parsed) fail(`cannot read ${configPath}`);
  const { rootDir, outDir } = parsed.options;
  const out = [];
  for (const src of parsed.fileNames) {
    if (/\.d\.[cm]?ts$/.test(src)) continue;
    const js = join(outDir, relative(rootDir, src))
      .replace(/\.ts$/, '.js')
      .replace(/\.mts$/, '.mjs')
      .replace(/\.cts$/, '.cjs');
    if (!existsSync(js)) fail(`${relative(REPO, js)} is not built (from ${relative(REPO, src)}); run: npx tsc -b ${project}`);
    out.push({ project, src: js, rel: join(project, relative(outDir, js)) });
  }
  return out;
}

function walk(dir, pred, acc = []) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name === 'node_modules') continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, pred, acc);
    else if (pred(p)) acc.push(p);
  }
  return acc;
}

/** "@scope/name/sub" -> "@scope/name"; "name/sub" -> "name". */
function packageName(specifier) {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

function bareImports(file) {
  const info = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
  return info.importedFiles.map((f) => f.fileName).filter((s) => !s.startsWith('.') && !s.startsWith('/') && !isBuiltin(s));
}

/** The directory Node would load `name` from when required by code in `fromDir`. */
function resolvePackage(name, fromDir) {
  for (let dir = fromDir; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return candidate;
    if (dir === REPO || dirname(dir) === dir) return undefined;
  }
}

export function agentFiles() {
  const files = PROJECTS.flatMap(compiledFiles);
  const protos = walk(join(REPO, 'proto'), (p) => p.endsWith('.proto')).map((src) => ({ src, rel: relative(REPO, src) }));

  const rootPkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8'));
  const imports = new Map(); // package -> first file importing it
  for (const f of files) for (const s of bareImports(f.src)) if (!imports.has(packageName(s))) imports.set(packageName(s), f.rel);
  for (const [name, by] of imports) {
    if (!rootPkg.dependencies?.[name]) fail(`${by} imports ${name}, which is not in package.json "dependencies" (a production install would not have it)`);
  }

  const packages = new Map(); // dir -> name
  const queue = [...imports.keys()].map((name) => ({ name, from: REPO, by: 'package.json' }));
  while (queue.length > 0) {
    const { name, from, by } = queue.shift();
    if (INSTALL_ONLY.has(name) || name.startsWith('@types/')) continue; // @types: declarations only
    const dir = resolvePackage(name, from);
    if (!dir) fail(`cannot find ${name} (needed by ${by}) in node_modules; run npm ci`);
    if (packages.has(dir)) continue;
    packages.set(dir, name);
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
    for (const dep of Object.keys(pkg.dependencies ?? {})) queue.push({ name: dep, from: dir, by: name });
    // Optional and peer dependencies count where they are installed (an optional one may be absent).
    for (const dep of [...Object.keys(pkg.optionalDependencies ?? {}), ...Object.keys(pkg.peerDependencies ?? {})]) {
      if (resolvePackage(dep, dir)) queue.push({ name: dep, from: dir, by: name });
    }
  }
  return {
    files: files.map((f) => f.rel).sort(),
    protos: protos.map((p) => p.rel).sort(),
    imports: [...imports.keys()].sort(),
    packages: [...packages].map(([dir, name]) => ({ name, dir: relative(REPO, dir) })).sort((a, b) => a.dir.localeCompare(b.dir)),
    sources: { files, protos },
  };
}

/** Files of an npm package that run time needs: no sources, type declarations, maps or docs. */
function keepPackageFile(pkgDir, native) {
  return (src) => {
    const rel = relative(pkgDir, src);
    if (rel === '') return true;
    const top = rel.split(sep)[0];
    if (top === 'node_modules') return false; // nested packages are copied on their own, if needed
    const name = basename(src);
    if (statSync(src).isDirectory()) {
      // A native package's C sources and build tree: only build/Release/*.node is loaded.
      if (native && (top === 'src' || top === 'deps')) return false;
      if (native && top === 'build') return rel === 'build' || rel === join('build', 'Release');
      return true;
    }
    if (native && top === 'build') return name.endsWith('.node') && !name.startsWith('test_');
    if (native && name === 'binding.gyp') return false;
    if (/^(LICEN[CS]E|COPYING|NOTICE)/i.test(name)) return true;
    return !/\.(map|md|markdown|[cm]?ts)$/.test(name);
  };
}

function stage(dest) {
  const all = agentFiles();
  for (const f of [...all.sources.files, ...all.sources.protos]) {
    mkdirSync(dirname(join(dest, f.rel)), { recursive: true });
    cpSync(f.src, join(dest, f.rel));
  }
  for (const { dir } of all.packages) {
    const src = join(REPO, dir);
    const native = existsSync(join(src, 'binding.gyp'));
    cpSync(src, join(dest, dir), { recursive: true, filter: keepPackageFile(src, native), verbatimSymlinks: true });
    const pkg = JSON.parse(readFileSync(join(src, 'package.json'), 'utf8'));
    const license = typeof pkg.license === 'string' ? pkg.license : 'unknown';
    console.log(`${pkg.name} ${pkg.version} ${dir} ${license}`);
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [cmd, arg] = process.argv.slice(2);
  if (cmd === 'list') {
    const { sources: _sources, ...rest } = agentFiles();
    console.log(JSON.stringify(rest, null, 2));
  } else if (cmd === 'stage' && arg) {
    stage(resolve(arg));
  } else {
    fail('usage: agent-files.mjs list | stage DIR');
  }
}
