#!/usr/bin/env python3
# A quick driver of the benches/ui.rs scenario with no release build: against a
# running berth (any build), fills 10,000 tags and 10,000 repositories, times the
# UI API pages, uploads a 2 GB tar and reads the peak RSS from /proc.
# Usage: scripts/bench-ui-quick.py HOST PORT BERTH_PID  (N=, UP= change the sizes)
import hashlib, http.client, json, sys, time, os, statistics, concurrent.futures as cf
host, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
N = int(os.environ.get("N", "10000")); UP = int(os.environ.get("UP", "2000000000"))
def conn(): return http.client.HTTPConnection(host, port, timeout=600)
def req(c, m, p, body=None, h=None):
    c.request(m, p, body=body, headers=h or {}); r = c.getresponse(); d = r.read(); return r.status, d
def sha(b): return "sha256:" + hashlib.sha256(b).hexdigest()
cfg, lay = b"{}", b"layer"
man = json.dumps({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
  "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":sha(cfg),"size":2},
  "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":sha(lay),"size":5}]})
MH = {"Content-Type":"application/vnd.oci.image.manifest.v1+json"}
def blobs(c, repo):
    for b in (cfg, lay): assert req(c,"POST",f"/v2/{repo}/blobs/uploads/?digest={sha(b)}",b)[0]==201
def tags(rng):
    c=conn()
    for i in rng: assert req(c,"PUT",f"/v2/bench/many-tags/manifests/t{i:05}",man,MH)[0]==201
def repos(rng):
    c=conn()
    for i in rng:
        r=f"bench/r{i:05}"; blobs(c,r); assert req(c,"PUT",f"/v2/{r}/manifests/v1",man,MH)[0]==201
t=time.time(); blobs(conn(),"bench/many-tags")
with cf.ThreadPoolExecutor(8) as ex:
    list(ex.map(tags,[range(k,N,8) for k in range(8)])); list(ex.map(repos,[range(k,N,8) for k in range(8)]))
print(f"filled {N} tags and {N} repositories in {time.time()-t:.0f} s")
c=conn()
for what,p in [("repository page, 10,000 tags (newest 50)","/api/repositories/bench/many-tags?per_page=50"),
  ("repository page, 10,000 tags (page 100 by name)","/api/repositories/bench/many-tags?per_page=50&page=100&sort=name"),
  ("namespace page, 10,000 repositories (first 50 by name)","/api/namespaces/bench/repositories?per_page=50"),
  ("namespace page, 10,000 repositories (search)","/api/namespaces/bench/repositories?per_page=50&q=r099"),
  ("namespace page sorted by pulls","/api/namespaces/bench/repositories?per_page=50&sort=pulls"),
  ("namespace page sorted by last push","/api/namespaces/bench/repositories?per_page=50&sort=pushed"),
  ("namespace page sorted by tags, page 7","/api/namespaces/bench/repositories?per_page=50&sort=tags&page=7"),
  ("namespace list (usage over 10,000 repositories)","/api/namespaces")]:
    ts=[]
    for _ in range(12):
        s=time.time(); st,_=req(c,"GET",p); assert st==200,(p,st); ts.append(time.time()-s)
    # The first request after a start fills berth's repository summaries (cold).
    print(f"{what}: first {ts[0]*1000:.0f} ms; then median {statistics.median(ts[1:])*1000:.0f} ms, worst {max(ts[1:])*1000:.0f} ms")
# A push between reads invalidates one repository's summary only.
ts=[]
for i in range(11):
    r=f"bench/r{i:05}"; assert req(c,"PUT",f"/v2/{r}/manifests/again{i}",man,MH)[0]==201
    s=time.time(); st,d=req(c,"GET","/api/namespaces/bench/repositories?per_page=50&sort=pushed"); ts.append(time.time()-s)
    assert json.loads(d)["items"][0]["name"]==r,(r,d[:200])
print(f"push, then the namespace sorted by last push (the pushed repository first): median {statistics.median(ts)*1000:.0f} ms, worst {max(ts)*1000:.0f} ms")
if os.environ.get("SKIP_UPLOAD"): sys.exit(0)
def hwm():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmHWM"): return int(l.split()[1])//1024
def hdr(name,size):
    h=bytearray(512); h[:len(name)]=name.encode(); h[100:107]=b"0000644"; h[124:135]=f"{size:011o}".encode()
    h[156]=ord("0"); h[257:263]=b"ustar\0"; h[263:265]=b"00"; h[148:156]=b" "*8
    h[148:155]=f"{sum(h):06o}\0".encode(); return bytes(h)
pad=lambda n: b"\0"*((512-n%512)%512)
conf=b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
mj=b'[{"Config":"config.json","RepoTags":["big:1"],"Layers":["layer/layer.tar"]}]'
head=hdr("config.json",len(conf))+conf+pad(len(conf))+hdr("layer/layer.tar",UP)
tail=pad(UP)+hdr("manifest.json",len(mj))+mj+pad(len(mj))+b"\0"*1024
total=len(head)+UP+len(tail)
def body():
    yield head; CH=1<<20; i=0
    while i*CH<UP:
        n=min(CH,UP-i*CH); yield bytes([i%251])*n; i+=1
    yield tail
before=hwm(); s=time.time(); c=conn()
c.putrequest("POST","/api/repositories/bench/big/-/upload?tag=1"); c.putheader("Content-Length",str(total)); c.endheaders()
for chunk in body(): c.send(chunk)
r=c.getresponse(); d=r.read(); el=time.time()-s
assert r.status==201,d
print(f"upload of a {total/1e9:.2f} GB tar: {el:.0f} s ({total/1e6/el:.0f} MB/s); berth peak RSS {before} MiB before, {hwm()} MiB after")
