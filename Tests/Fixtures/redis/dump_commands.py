import socket
def read_reply(f):
    line=f.readline()
    t=line[:1]; rest=line[1:-2]
    if t==b'*':
        n=int(rest); return None if n<0 else [read_reply(f) for _ in range(n)]
    if t==b'$':
        n=int(rest)
        if n<0: return None
        d=f.read(n+2)[:-2]; return d.decode()
    if t==b':': return int(rest)
    if t in b'+-': return rest.decode()
    raise Exception(line)
s=socket.socket(socket.AF_UNIX); s.connect('/tmp/rp/r.sock'); f=s.makefile('rb')
s.sendall(b'*1\r\n$7\r\nCOMMAND\r\n')
r=read_reply(f)
for c in sorted(r,key=lambda c:c[0]):
    name,arity,flags,fk,lk,step=c[:6]
    subs=c[9] if len(c)>9 else []
    print(name,arity,','.join(flags),fk,lk,step, 'ACL:'+','.join(c[6]))
    for sc in sorted(subs or [],key=lambda c:c[0]):
        print('   ',sc[0],sc[1],','.join(sc[2]),sc[3],sc[4],sc[5])
