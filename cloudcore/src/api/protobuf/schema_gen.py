"""Generates schema/: one message! table per k8s-pb message reachable from the served kinds,
joined on protobuf field numbers with the Go types (JSON names; value, pointer or inline),
written one file per API group and version (core/v1's volume sources in a file of their own).

Usage: python3 schema_gen.py K8S_PB_SRC K8S_API_GIT K8S_APIMACHINERY_GIT [module:Kind ...]
  (run from this directory: it rewrites schema/*.rs)
  K8S_PB_SRC: the src/ of the k8s-pb crate (~/.cargo/registry/src/*/k8s-pb-0.9.0/src);
  K8S_API_GIT, K8S_APIMACHINERY_GIT: git directories of kubernetes/api and kubernetes/apimachinery
  (HEAD is read); module:Kind adds a root, e.g. api/policy/v1:Eviction.
Fields the Go sources no longer have are reported on stderr and mapped to their camelCase name.
"""
import re, subprocess, sys

PB, API, MACHINERY = sys.argv[1:4]
GO = {
    'api/core/v1': (API, 'core/v1'),
    'api/apps/v1': (API, 'apps/v1'),
    'api/autoscaling/v1': (API, 'autoscaling/v1'),
    'api/batch/v1': (API, 'batch/v1'),
    'api/policy/v1': (API, 'policy/v1'),
    'apimachinery/pkg/apis/meta/v1': (MACHINERY, 'pkg/apis/meta/v1'),
}
SPECIAL = {
    'apimachinery/pkg/apis/meta/v1::Time', 'apimachinery/pkg/apis/meta/v1::MicroTime',
    'apimachinery/pkg/apis/meta/v1::Duration', 'apimachinery/pkg/apis/meta/v1::FieldsV1',
    'apimachinery/pkg/api/resource::Quantity', 'apimachinery/pkg/util/intstr::IntOrString',
    'apimachinery/pkg/runtime::RawExtension',
}
ROOTS = [('api/core/v1', k) for k in
         ['Namespace', 'Node', 'Pod', 'ConfigMap', 'Secret', 'Service', 'Event', 'Binding']]
ROOTS += [('api/apps/v1', k) for k in ['Deployment', 'ReplicaSet', 'DaemonSet', 'StatefulSet']]
ROOTS += [('api/batch/v1', k) for k in ['Job', 'CronJob']]
ROOTS += [('api/autoscaling/v1', 'Scale'), ('apimachinery/pkg/apis/meta/v1', 'DeleteOptions')]
# What responses carry: the lists of the served kinds, and Status.
ROOTS += [('api/core/v1', k + 'List') for k in
          ['Namespace', 'Node', 'Pod', 'ConfigMap', 'Secret', 'Service', 'Event']]
ROOTS += [('api/apps/v1', k + 'List') for k in ['Deployment', 'ReplicaSet', 'DaemonSet', 'StatefulSet']]
ROOTS += [('api/batch/v1', k + 'List') for k in ['Job', 'CronJob']]
ROOTS += [('apimachinery/pkg/apis/meta/v1', 'Status')]
ROOTS += [(m, k) for m, k in (a.split(':') for a in sys.argv[4:])]

def pb_structs(mod):
    src = open(f'{PB}/{mod}/mod.rs').read()
    out = {}
    for m in re.finditer(r'pub struct (\w+) \{(.*?)\n\}', src, re.S):
        fields = []
        for f in re.finditer(r'#\[prost\(([^\]]*)\)\]\s*pub (r#\w+|\w+):\s*(.*?),?\s*(?=\n\s*(?:///|#\[)|$)', m.group(2), re.S):
            attr, name, ty = f.group(1), f.group(2), re.sub(r'\s+', '', f.group(3)).rstrip(',').replace(',>', '>')
            tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
            fields.append((tag, name, attr, ty))
        out[m.group(1)] = fields
    return out

def resolve(mod, ty):
    """The (module, struct) a message field refers to."""
    inner = re.sub(r'^(::core::option::Option|::prost::alloc::vec::Vec)<(.*)>$', r'\2', ty)
    if inner.startswith('::prost::alloc::collections::BTreeMap<'):
        inner = inner[len('::prost::alloc::collections::BTreeMap<'):-1].split(',', 1)[1]
    parts = inner.split('::')
    base = mod.split('/')
    while parts[0] == 'super':
        base.pop(); parts.pop(0)
    return '/'.join(base + parts[:-1]), parts[-1]

def go_structs(repo, path):
    files = subprocess.run(['git', '-C', repo, 'ls-tree', '--name-only', 'HEAD', path + '/'],
                           capture_output=True, text=True).stdout.split()
    out = {}
    for f in files:
        if not f.endswith('.go') or f.endswith('_test.go'):
            continue
        src = subprocess.run(['git', '-C', repo, 'show', 'HEAD:' + f], capture_output=True, text=True).stdout
        for m in re.finditer(r'^type (\w+) struct \{\n(.*?)^\}', src, re.S | re.M):
            fields = {}
            for line in m.group(2).split('\n'):
                g = re.match(r'^\t([^\t/][^`]*?)\s*`(.*)`', line)
                if not g:
                    continue
                decl, tags = g.group(1).split(), g.group(2)
                pt = re.search(r'protobuf:"[a-z]+,(\d+),', tags)
                if not pt:
                    continue
                jm = re.search(r'json:"([^"]*)"', tags)
                if not jm:
                    continue
                js = jm.group(1).split(',')
                embedded = len(decl) == 1
                gotype = decl[-1]
                jname = js[0]
                inline = embedded and (jname == '' or 'inline' in js[1:])
                fields[int(pt.group(1))] = (jname, gotype.startswith('*'), inline, decl[0])
            out[m.group(1)] = fields
    return out

pbcache, gocache = {}, {}
def pb(mod):
    if mod not in pbcache: pbcache[mod] = pb_structs(mod)
    return pbcache[mod]
def go(mod):
    if mod not in gocache: gocache[mod] = go_structs(*GO[mod])
    return gocache[mod]

seen, order, problems = set(), [], []
todo = list(ROOTS)
while todo:
    mod, name = todo.pop(0)
    key = f'{mod}::{name}'
    if key in seen or key in SPECIAL:
        continue
    seen.add(key)
    fields = pb(mod)[name]
    gofields = {k.lower(): v for k, v in go(mod).items()}.get(name.lower())
    if gofields is None:
        problems.append(f'no Go struct for {key}')
        gofields = {}
    rows = []
    for tag, fname, attr, ty in fields:
        if 'message' in attr or ('btree_map' in attr and 'message(' in attr):
            todo.append(resolve(mod, ty))
        g = gofields.get(tag)
        if g is None:
            # A field newer Go sources dropped (alpha): camelCase of the proto name.
            parts = fname.split('_')
            jname = parts[0] + ''.join(p[:1].upper() + p[1:] for p in parts[1:])
            ptr = 'message' in attr
            problems.append(f'{key}.{fname} (tag {tag}) has no Go field: {jname} ptr={ptr}')
            g = (jname, ptr, False, '')
        jname, ptr, inline, goname = g
        mode = 'inline' if inline else ('ptr' if ptr else 'val')
        rows.append((tag, fname, mode, jname))
    extra = set(gofields) - {t for t, *_ in fields}
    for t in sorted(extra):
        problems.append(f'{key}: Go field {gofields[t]} tag {t} not in k8s-pb')
    order.append((mod, name, rows))

for p in problems:
    print('PROBLEM', p, file=sys.stderr)
order.sort(key=lambda x: (x[0], x[1]))

def file_of(mod, name):
    """The schema/ file of a message: its group and version; core/v1's volume sources apart."""
    if mod == 'api/core/v1':
        return 'core_v1_volumes' if ('Volume' in name or 'Projection' in name) else 'core_v1'
    return mod.replace('api/', '').replace('apimachinery/pkg/apis/', '').replace('/', '_')

files = {}
for mod, name, rows in order:
    path = 'pb::' + mod.replace('/', '::') + '::' + name
    text = f'message!({path} {{\n'
    for tag, fname, mode, jname in rows:
        text += f'    {tag} {fname}: {mode} "{jname}",\n'
    text += '});\n'
    files.setdefault(file_of(mod, name), []).append(text)
for f, texts in files.items():
    with open(f'schema/{f}.rs', 'w') as out:
        out.write('//! @generated by `schema_gen.py` (see its header): the `message!` tables of the k8s-pb\n'
                  f'//! messages in `{f}` reachable from the served kinds. Edit the generator, not this file.\n'
                  'use super::super::json::message;\nuse k8s_pb as pb;\n\n' + ''.join(texts))
with open('schema/mod.rs', 'w') as out:
    out.write('//! The schema tables, one file per API group and version (core/v1\'s volume sources in a file\n'
              '//! of their own), as `schema_gen.py` writes them. Only the `message!` impls matter; the\n'
              '//! modules exist so that each file stays readable.\n\n'
              + ''.join(f'mod {m};\n' for m in sorted(files)))
print(f'// {len(order)} messages', file=sys.stderr)
