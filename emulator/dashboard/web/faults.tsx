/**
 * Faults for instructors: what is set and how often it fired, an add form for the kinds a lab
 * uses most (each with the fields it needs; the rest is `arraylab fault add`), remove and clear.
 * The array checks every value and its refusal is shown as it words it.
 */
import { useContext, useState } from 'preact/hooks';
import { api, toast } from './api.js';
import { Empty, Page, useData, WhoAmIContext } from './common.js';
import { time } from './format.js';
import type { FaultView, Overview, RemoteView } from './types.js';

type Target = 'volume' | 'export' | 'session' | 'remote';
type Field = 'ops' | 'errno' | 'lba' | 'ms' | 'jitterMs' | 'mibs' | 'iops' | 'bits' | 'refuseMs' | 'drain' | 'trigger';

interface KindForm {
  kind: string;
  what: string;
  target: Target;
  fields: Field[];
  /** Choices of ops, the first the default ('' = the kind's own default). */
  ops?: string[];
}

/** The common kinds (emulator/fault/README.md), with the fields each needs. */
export const KINDS: KindForm[] = [
  {
    kind: 'error',
    what: 'the operation fails (EIO: a medium error)',
    target: 'volume',
    fields: ['ops', 'errno', 'lba', 'trigger'],
    ops: ['read,write', 'read', 'write', 'flush'],
  },
  { kind: 'bad-blocks', what: 'reads of these blocks fail until rewritten', target: 'volume', fields: ['lba'] },
  { kind: 'delay', what: 'each operation waits', target: 'volume', fields: ['ms', 'jitterMs', 'ops', 'trigger'], ops: ['', 'read', 'write', 'read,write'] },
  { kind: 'rate', what: 'a bandwidth or IOPS cap', target: 'volume', fields: ['mibs', 'iops'] },
  { kind: 'pause', what: 'a hung path: operations wait until the fault is removed', target: 'volume', fields: ['drain'] },
  { kind: 'corrupt', what: 'bits flipped in data read or written', target: 'volume', fields: ['ops', 'bits', 'trigger'], ops: ['read', 'write'] },
  { kind: 'lying-flush', what: 'flushes acknowledged and not done', target: 'volume', fields: [] },
  { kind: 'disconnect', what: "drop the export's clients now", target: 'export', fields: ['refuseMs'] },
  { kind: 'copy-error', what: "the session's copy I/O fails: it goes error-suspended", target: 'session', fields: ['trigger'] },
  { kind: 'link-down', what: 'the link to a remote array is down', target: 'remote', fields: [] },
  { kind: 'link-delay', what: 'each transfer to the remote waits', target: 'remote', fields: ['ms', 'jitterMs'] },
  { kind: 'link-rate', what: 'cap the link to the remote', target: 'remote', fields: ['mibs'] },
];

const FAULT_ROLES = 'instructor or admin';

type Trigger = 'always' | 'once' | 'every' | 'after' | 'probability';

interface FormState {
  kind: string;
  target: string;
  ops: string;
  errno: string;
  lba: string;
  ms: string;
  jitterMs: string;
  mibs: string;
  iops: string;
  bits: string;
  refuseMs: string;
  drain: boolean;
  trigger: Trigger;
  triggerValue: string;
  label: string;
}

const EMPTY: FormState = {
  kind: 'error',
  target: '',
  ops: 'read,write',
  errno: 'EIO',
  lba: '',
  ms: '100',
  jitterMs: '',
  mibs: '5',
  iops: '',
  bits: '',
  refuseMs: '',
  drain: false,
  trigger: 'always',
  triggerValue: '',
  label: '',
};

/** The form as POST /api/faults's body (the CLI's options in camelCase); only what was given. */
export function bodyOf(f: FormState, k: KindForm): Record<string, unknown> {
  const body: Record<string, unknown> = { kind: f.kind, [k.target]: f.target };
  const num = (field: Field, value: string) => {
    if (!k.fields.includes(field) || value.trim() === '') return;
    const n = Number(value);
    if (!Number.isFinite(n)) throw new Error(`${field}: ${JSON.stringify(value)} is not a number`);
    body[field] = n;
  };
  if (k.fields.includes('ops') && f.ops !== '') body.ops = f.ops;
  if (k.fields.includes('errno') && f.errno !== '') body.errno = f.errno;
  if (k.fields.includes('lba') && f.lba.trim() !== '') body.lba = f.lba.trim();
  num('ms', f.ms);
  num('jitterMs', f.jitterMs);
  num('mibs', f.mibs);
  num('iops', f.iops);
  num('bits', f.bits);
  num('refuseMs', f.refuseMs);
  if (k.fields.includes('drain') && f.drain) body.drain = true;
  if (k.fields.includes('trigger') && f.trigger !== 'always') {
    if (f.trigger === 'once') body.once = true;
    else {
      const n = Number(f.triggerValue);
      if (f.triggerValue.trim() === '' || !Number.isFinite(n)) throw new Error(`${f.trigger}: give a number`);
      body[f.trigger] = n;
    }
  }
  if (f.label.trim() !== '') body.label = f.label.trim();
  return body;
}

function AddForm(props: { can: boolean; title: string | undefined; onAdded: () => void }) {
  const [f, setF] = useState<FormState>(EMPTY);
  const [busy, setBusy] = useState(false);
  // Target lists change seldom: fetched once and again when a select is opened, not every second.
  const targets = useData<Overview>('/api/overview', { live: false });
  const remotes = useData<{ remotes: RemoteView[] }>('/api/remotes', { live: false });
  const k = KINDS.find((x) => x.kind === f.kind) ?? KINDS[0]!;
  const set = <K extends keyof FormState>(key: K, value: FormState[K]) => setF((old) => ({ ...old, [key]: value }));
  const pickKind = (kind: string) => {
    const next = KINDS.find((x) => x.kind === kind) ?? KINDS[0]!;
    setF((old) => ({ ...old, kind, ops: next.ops?.[0] ?? '', target: next.target === k.target ? old.target : '' }));
  };
  const options: string[] =
    k.target === 'volume' || k.target === 'export'
      ? (targets.data?.volumes.map((v) => v.name) ?? [])
      : k.target === 'session'
        ? (targets.data?.copies.map((c) => c.id) ?? [])
        : (remotes.data?.remotes.map((r) => r.name) ?? []);
  const target = f.target !== '' && options.includes(f.target) ? f.target : (options[0] ?? '');
  const describe = (v: string) => {
    if (k.target !== 'session') return v;
    const c = targets.data?.copies.find((x) => x.id === v);
    return c ? `#${c.id} ${c.type} ${c.source} → ${c.destination}` : v;
  };
  const submit = async (e: Event) => {
    e.preventDefault();
    let body: Record<string, unknown>;
    try {
      body = bodyOf({ ...f, target }, k);
    } catch (err) {
      toast(err instanceof Error ? err.message : String(err));
      return;
    }
    setBusy(true);
    try {
      const added = await api<FaultView>('/api/faults', { method: 'POST', body });
      toast(`added fault ${added.id} on ${added.target}: ${added.description}`, 'info');
      props.onAdded();
    } catch {
      // api() showed the array's reason.
    } finally {
      setBusy(false);
    }
  };
  const field = (name: Field) => k.fields.includes(name);
  return (
    <form class="card fault-form" onSubmit={submit}>
      <h2>Add a fault</h2>
      {props.can ? null : (
        <p class="notice" data-testid="fault-denied">
          You can watch faults here; adding and removing them {props.title}.
        </p>
      )}
      <div class="form-grid">
        <label>
          Kind
          <select data-testid="fault-kind" value={f.kind} onChange={(e) => pickKind((e.target as HTMLSelectElement).value)}>
            {KINDS.map((x) => (
              <option key={x.kind} value={x.kind}>
                {x.kind}
              </option>
            ))}
          </select>
        </label>
        <label>
          {k.target === 'export' ? 'Export' : k.target === 'session' ? 'Session' : k.target === 'remote' ? 'Remote array' : 'Volume'}
          <select
            data-testid={k.target === 'volume' || k.target === 'export' ? 'fault-volume' : `fault-${k.target}`}
            value={target}
            onFocus={() => (k.target === 'remote' ? remotes.reload() : targets.reload())}
            onChange={(e) => set('target', (e.target as HTMLSelectElement).value)}
          >
            {options.length === 0 ? <option value="">(none)</option> : null}
            {options.map((o) => (
              <option key={o} value={o}>
                {describe(o)}
              </option>
            ))}
          </select>
        </label>
        {field('ops') ? (
          <label>
            Operations
            <select data-testid="fault-ops" value={f.ops} onChange={(e) => set('ops', (e.target as HTMLSelectElement).value)}>
              {(k.ops ?? []).map((o) => (
                <option key={o} value={o}>
                  {o === '' ? 'all' : o.replace(',', ' and ')}
                </option>
              ))}
            </select>
          </label>
        ) : null}
        {field('errno') ? (
          <label>
            Error
            <select value={f.errno} onChange={(e) => set('errno', (e.target as HTMLSelectElement).value)}>
              {['EIO', 'ENOSPC', 'EPERM', 'EINVAL', 'ENOMEM', 'ESHUTDOWN'].map((x) => (
                <option key={x} value={x}>
                  {x}
                </option>
              ))}
            </select>
          </label>
        ) : null}
        {field('lba') ? (
          <label>
            Blocks {f.kind === 'bad-blocks' ? '(required)' : '(optional)'}
            <input
              value={f.lba}
              placeholder={f.kind === 'bad-blocks' ? '4096,4097,5000-5010' : 'FIRST-LAST, e.g. 1000-2000'}
              onInput={(e) => set('lba', (e.target as HTMLInputElement).value)}
            />
          </label>
        ) : null}
        {field('ms') ? <NumberField label="Delay (ms)" value={f.ms} onInput={(v) => set('ms', v)} /> : null}
        {field('jitterMs') ? <NumberField label="Jitter ± (ms)" value={f.jitterMs} onInput={(v) => set('jitterMs', v)} /> : null}
        {field('mibs') ? <NumberField label="MiB/s" value={f.mibs} onInput={(v) => set('mibs', v)} /> : null}
        {field('iops') ? <NumberField label="IOPS" value={f.iops} onInput={(v) => set('iops', v)} /> : null}
        {field('bits') ? <NumberField label="Bits flipped" value={f.bits} placeholder="1" onInput={(v) => set('bits', v)} /> : null}
        {field('refuseMs') ? <NumberField label="Refuse reconnects (ms)" value={f.refuseMs} onInput={(v) => set('refuseMs', v)} /> : null}
        {field('drain') ? (
          <label class="check">
            <input type="checkbox" checked={f.drain} onChange={(e) => set('drain', (e.target as HTMLInputElement).checked)} /> drain operations in flight
          </label>
        ) : null}
        {field('trigger') ? (
          <label>
            When
            <select value={f.trigger} onChange={(e) => set('trigger', (e.target as HTMLSelectElement).value as Trigger)}>
              <option value="always">every time</option>
              <option value="once">once</option>
              <option value="every">every Nth time</option>
              <option value="after">after the first N</option>
              <option value="probability">with probability P</option>
            </select>
          </label>
        ) : null}
        {field('trigger') && f.trigger !== 'always' && f.trigger !== 'once' ? (
          <NumberField
            label={f.trigger === 'probability' ? 'P (0 to 1)' : 'N'}
            value={f.triggerValue}
            placeholder={f.trigger === 'probability' ? '0.1' : '10'}
            onInput={(v) => set('triggerValue', v)}
          />
        ) : null}
        <label>
          Label
          <input value={f.label} placeholder="optional, shown in lists" onInput={(e) => set('label', (e.target as HTMLInputElement).value)} />
        </label>
      </div>
      <p class="muted">
        <strong>{k.kind}</strong>: {k.what}. Other kinds and options: <code>arraylab fault add --help</code>.
      </p>
      <button type="submit" data-testid="fault-add" disabled={!props.can || busy || target === ''} title={props.title}>
        {busy ? 'Adding…' : 'Add fault'}
      </button>
    </form>
  );
}

function NumberField(props: { label: string; value: string; placeholder?: string; onInput: (v: string) => void }) {
  return (
    <label>
      {props.label}
      <input
        type="number"
        min="0"
        step="any"
        value={props.value}
        placeholder={props.placeholder}
        onInput={(e) => props.onInput((e.target as HTMLInputElement).value)}
      />
    </label>
  );
}

export function FaultsPage() {
  const me = useContext(WhoAmIContext);
  const { data, error, reload } = useData<{ faults: FaultView[] }>('/api/faults');
  const can = me.can.faults;
  const title = can ? undefined : `needs the ${FAULT_ROLES} role; you are ${me.roles.join(', ') || 'not logged in'}`;
  const remove = async (id: string) => {
    await api(`/api/faults/${encodeURIComponent(id)}`, { method: 'DELETE' }).catch(() => undefined);
    reload();
  };
  const clear = async () => {
    if (!window.confirm('Remove every fault?')) return;
    await api('/api/faults/clear', { method: 'POST', body: {} }).catch(() => undefined);
    reload();
  };
  const faults = data?.faults ?? [];
  return (
    <Page id="faults" title="Faults" error={error} loading={!data && !error}>
      <AddForm can={can} title={title} onAdded={reload} />
      <div class="section-head">
        <h2>Active faults</h2>
        <button type="button" class="danger" data-testid="fault-clear" disabled={!can || faults.length === 0} title={title} onClick={clear}>
          Clear all
        </button>
      </div>
      {faults.length === 0 ? (
        <Empty>No faults set: the array behaves.</Empty>
      ) : (
        <table>
          <thead>
            <tr>
              <th>ID</th>
              <th>Kind</th>
              <th>Target</th>
              <th>What it does</th>
              <th class="num" title="fired / matching operations seen">
                Fired
              </th>
              <th>Added</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {faults.map((f) => (
              <tr key={f.id} data-testid="fault-row" data-fault={f.id} data-kind={f.kind}>
                <td class="mono">{f.id}</td>
                <td>
                  <span class="badge badge-bad">{f.kind}</span>
                </td>
                <td class="mono">{f.target}</td>
                <td>
                  {f.description}
                  {f.label ? <span class="tag">{f.label}</span> : null}
                  {f.transient ? <span class="tag">transient</span> : null}
                  {f.flag ? <span class="tag">flag {f.flag}</span> : null}
                </td>
                <td class="num">
                  {f.fired} / {f.seen}
                </td>
                <td class="small">{time(f.createdAt)}</td>
                <td>
                  <button type="button" data-testid="fault-remove" disabled={!can} title={title ?? `remove fault ${f.id}`} onClick={() => remove(f.id)}>
                    Remove
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Page>
  );
}
