// The status page: one self-contained HTML document (inline CSS and script,
// no external assets) that polls /api/v1/status. It must work on an
// air-gapped appliance, so nothing here may reference another host.
#include "apilb/admin/admin_report.hpp"

namespace apilb {

const std::string& status_page_html() {
    static const std::string page = R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>apilb status</title>
<link rel="icon" href="data:,">
<style>
:root{--bg:#0f1419;--panel:#182029;--line:#263241;--text:#e6edf3;--muted:#8b98a5;--up:#2ea043;--down:#f85149;--drain:#d29922;--warn:#d29922;--bar:#388bfd}
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:var(--text)}
header{display:flex;gap:16px;align-items:center;padding:12px 20px;border-bottom:1px solid var(--line);flex-wrap:wrap}
header h1{font-size:18px;margin:0;font-weight:600}
.pill{padding:3px 10px;border-radius:999px;font-weight:600;font-size:12px;letter-spacing:.03em}
.pill.up{background:rgba(46,160,67,.2);color:#56d364}.pill.down{background:rgba(248,81,73,.2);color:#ff7b72}
.pill.drain{background:rgba(210,153,34,.2);color:#e3b341}.pill.muted{background:#263241;color:var(--muted)}
.meta{color:var(--muted);font-size:12px}main{padding:16px 20px;display:grid;gap:16px}
section.pool{background:var(--panel);border:1px solid var(--line);border-radius:8px;overflow:hidden}
section.pool h2{margin:0;padding:10px 14px;font-size:15px;display:flex;gap:10px;align-items:center;border-bottom:1px solid var(--line)}
table{width:100%;border-collapse:collapse}th,td{padding:8px 14px;text-align:left;border-bottom:1px solid var(--line);vertical-align:middle}
th{color:var(--muted);font-weight:500;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
tr:last-child td{border-bottom:none}td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.state{display:inline-flex;align-items:center;gap:6px;font-weight:600}.dot{width:10px;height:10px;border-radius:50%}
.dot.up{background:var(--up)}.dot.down{background:var(--down)}.dot.drained{background:var(--drain)}
.reason{color:var(--muted);font-size:12px;max-width:420px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.down .reason{color:#ff7b72}.barwrap{display:flex;align-items:center;gap:8px;min-width:160px}
.bar{height:8px;border-radius:4px;background:var(--bar);min-width:2px}.track{flex:1;background:#263241;border-radius:4px}
#events{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:10px 14px}
#events h2{margin:0 0 6px;font-size:15px}#events ol{margin:0;padding-left:18px;font-size:13px}
.disc{padding:8px 14px;border-top:1px solid var(--line);font-size:13px;display:grid;gap:3px}.disc b{color:var(--muted);font-weight:500;display:inline-block;min-width:96px}
#events li{padding:2px 0}.ev-up{color:#56d364}.ev-down{color:#ff7b72}#error{color:#ff7b72;font-weight:600}
</style></head><body>
<header><h1>apilb</h1><span id="ready" class="pill muted">…</span><span id="role" class="pill muted" hidden></span>
<span class="meta" id="summary"></span><span class="meta" id="updated"></span><span id="error"></span></header>
<main><div id="pools"></div><div id="events"><h2>Recent state changes</h2><ol id="eventlist"><li class="meta">none yet</li></ol></div></main>
<script>
"use strict";
const $=id=>document.getElementById(id);
function el(tag,attrs,...kids){const e=document.createElement(tag);for(const[k,v]of Object.entries(attrs||{})){if(k==="class")e.className=v;else if(k==="style")e.style.cssText=v;else e.setAttribute(k,v);}for(const k of kids){e.append(k instanceof Node?k:document.createTextNode(String(k)));}return e;}
function bytes(n){const u=["B","KiB","MiB","GiB","TiB"];let i=0;while(n>=1024&&i<u.length-1){n/=1024;i++;}return(i?n.toFixed(1):n)+" "+u[i];}
function ago(ms){const s=Math.max(0,Math.round((Date.now()-ms)/1000));return s<60?s+"s ago":s<3600?Math.floor(s/60)+"m ago":Math.floor(s/3600)+"h ago";}
const sources={api:"the API",state_file:"the state file (last-known-good: the API has not answered since start)",seed:"the seed (the API has not answered since start)"};
function discovery(d){
  const ep=e=>(e.ip.includes(":")?"["+e.ip+"]":e.ip)+":"+e.port+(e.terminating?" (terminating)":e.serving===false?" (not serving)":"");
  const row=(k,v)=>el("div",{},el("b",{},k),v);
  const disc=(d.discovered||[]).slice(0,64),seed=(d.seed||[]).slice(0,64);
  return el("div",{class:"disc","data-discovery":d.pool},
    row("Discovery","watch "+d.watch_state+" · last sync "+(d.last_sync_unix>0?ago(d.last_sync_unix*1000):"never")+" · lists "+d.lists+" · relists "+d.relists+" · events "+d.events+" · errors "+d.errors+" · empty lists "+d.empty_lists),
    row("Set from",sources[d.source]||d.source),
    row("API server",d.api_server||"none tried yet"),
    row("Last error",d.last_error?d.last_error+" ("+ago(d.last_error_unix*1000)+")":"none"),
    row("Discovered",disc.length?disc.map(ep).join(", "):"none yet"),
    row("Seed",seed.length?seed.map(b=>b.name+" "+b.address).join(", "):"–"),
    row("State file",d.state_file?d.state_file+(d.source==="state_file"?" (in use)":""):"none"));
}
function render(st){
  const ready=$("ready");ready.textContent=st.ready?"READY":"NOT READY"+(st.ready_reason?": "+st.ready_reason:"");ready.className="pill "+(st.ready?"up":"down");
  const role=$("role");if(st.vrrp_role){role.hidden=false;role.textContent="VRRP "+st.vrrp_role;role.className="pill "+(st.vrrp_role==="MASTER"?"up":st.vrrp_role==="BACKUP"?"muted":"down");}
  $("summary").textContent=st.sessions_active+" session(s) · "+st.workers+" worker(s) · config "+st.config_hash+(st.draining?" · DRAINING":"");
  const pools=$("pools");pools.replaceChildren();const events=[];
  const disc={};for(const d of st.discovery||[])disc[d.pool]=d;
  for(const p of st.pools){
    const maxActive=Math.max(1,...p.backends.map(b=>b.active_sessions));
    const tbody=el("tbody");
    for(const b of p.backends){
      const lp=b.last_probe;
      const reason=b.drain?"drained ("+b.drain_source+")":lp?(lp.passed?"last check passed":lp.detail):"not checked yet";
      tbody.append(el("tr",{class:b.state,"data-backend":b.name},
        el("td",{},el("div",{class:"state"},el("span",{class:"dot "+b.state}),b.state.toUpperCase()),el("div",{class:"reason",title:reason},reason)),
        el("td",{},el("div",{},b.name),el("div",{class:"meta"},b.address+" · weight "+b.weight+(b.discovery?" · "+b.origin+", "+b.discovery.replace("_"," "):""))),
        el("td",{},el("div",{class:"barwrap"},el("div",{class:"track"},el("div",{class:"bar",style:"width:"+(100*b.active_sessions/maxActive)+"%"})),el("span",{class:"num"},b.active_sessions))),
        el("td",{class:"num"},b.sessions_total),
        el("td",{class:"num"},"↑ "+bytes(b.bytes_to_backend)+" ↓ "+bytes(b.bytes_from_backend)),
        el("td",{class:"num"},lp?lp.duration_ms.toFixed(1)+" ms · "+ago(lp.unix_ms):"–"),
        el("td",{class:"num"},b.connect_failures)));
      for(const c of b.recent_changes)events.push({...c,pool:p.name,backend:b.name});
    }
    const allDown=p.healthy===0;
    pools.append(el("section",{class:"pool","data-pool":p.name},
      el("h2",{},p.name,el("span",{class:"pill "+(allDown?"down":p.healthy<p.backends.length?"drain":"up")},p.healthy+"/"+p.backends.length+" healthy"),el("span",{class:"meta"},p.balance+" · check "+p.health_check)),
      el("table",{},el("thead",{},el("tr",{},...["State","Backend","Active sessions","Sessions","Bytes","Last probe","Connect failures"].map(h=>el("th",{},h)))),tbody),
      ...(disc[p.name]?[discovery(disc[p.name])]:[])));
  }
  events.sort((a,b)=>b.unix_ms-a.unix_ms);
  const list=$("eventlist");list.replaceChildren();
  if(!events.length)list.append(el("li",{class:"meta"},"none yet"));
  for(const e of events.slice(0,20))list.append(el("li",{class:e.healthy?"ev-up":"ev-down"},new Date(e.unix_ms).toLocaleTimeString()+" "+e.pool+"/"+e.backend+" → "+(e.healthy?"healthy":"unhealthy: "+e.reason)));
  $("updated").textContent="updated "+new Date().toLocaleTimeString();$("error").textContent="";
}
async function poll(){
  try{const r=await fetch("/api/v1/status",{cache:"no-store"});if(!r.ok)throw new Error("HTTP "+r.status);render(await r.json());}
  catch(e){$("error").textContent="apilb unreachable ("+e.message+")";}
  setTimeout(poll,1000);
}
poll();
</script></body></html>
)HTML";
    return page;
}

}  // namespace apilb
