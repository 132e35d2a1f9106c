/* The chat simulator: two phones, each a WeChat user of the Official Account, and a side panel.
   Messages go through /sandbox/api/send (the server pushes them to /wechat like WeChat does); links
   open inside the phone, where a WeixinJSBridge stand-in shows WeChat Pay's confirmation sheet. */
(function () {
  "use strict";
  var phones = {};
  var FEED_MS = 1000, PANEL_MS = 1500;

  function $(root, sel) { return root.querySelector(sel); }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = text; }
    return node;
  }
  function api(method, path, body) {
    var opts = { method: method, credentials: "same-origin", headers: { "Content-Type": "application/json" } };
    if (body !== undefined) { opts.body = JSON.stringify(body); }
    return fetch("/sandbox/api" + path, opts).then(function (r) {
      return r.json().then(function (data) { data._status = r.status; return data; });
    });
  }

  /* ------------------------------------------------------------------ rendering a chat */

  var URL_RE = /(https?:\/\/[^\s，。；、）)]+)/g;

  function linkify(parent, text, phone) {
    var last = 0;
    text.replace(URL_RE, function (url, _m, offset) {
      parent.appendChild(document.createTextNode(text.slice(last, offset)));
      parent.appendChild(linkTo(url, url, phone));
      last = offset + url.length;
      return url;
    });
    parent.appendChild(document.createTextNode(text.slice(last)));
  }

  function linkTo(url, label, phone) {
    var a = el("a", "link", label);
    a.href = url;
    a.addEventListener("click", function (e) { e.preventDefault(); openLink(phone, url); });
    return a;
  }

  function bubble(item, phone) {
    var row = el("div", "msg " + item.dir + " " + item.type);
    row.dataset.kind = item.type;
    var box = el("div", "bubble");
    if (item.type === "text" || item.type === "notice") {
      linkify(box, item.text || "", phone);
    } else if (item.type === "image") {
      var img = el("img", "qr");
      img.alt = "图片（二维码）";
      img.src = "/sandbox/media/" + encodeURIComponent(item.media_id);
      box.appendChild(img);
    } else if (item.type === "news") {
      item.articles.forEach(function (a) {
        var card = el("a", "article");
        card.href = a.url || "#";
        card.appendChild(el("strong", null, a.title));
        card.appendChild(el("span", null, a.description));
        card.addEventListener("click", function (e) { e.preventDefault(); if (a.url) { openLink(phone, a.url); } });
        box.appendChild(card);
      });
    } else if (item.type === "template") {
      box.appendChild(el("div", "tpl-title", item.title));
      item.rows.forEach(function (r) {
        var line = el("div", "tpl-row");
        if (r.label) { line.appendChild(el("span", "tpl-label", r.label + "：")); }
        line.appendChild(el("span", "tpl-value", r.value));
        box.appendChild(line);
      });
      if (item.url) { box.appendChild(linkTo(item.url, "详情", phone)).className = "tpl-link"; }
    }
    row.appendChild(box);
    return row;
  }

  function renderFeed(phone, items) {
    var json = JSON.stringify(items);
    if (json === phone.lastFeed) { return; }
    phone.lastFeed = json;
    var chat = $(phone.root, ".chat");
    var atBottom = chat.scrollHeight - chat.scrollTop - chat.clientHeight < 60;
    chat.textContent = "";
    if (!items.length) { chat.appendChild(el("p", "empty", "还没有消息。")); }
    items.forEach(function (item) { chat.appendChild(bubble(item, phone)); });
    if (atBottom || phone.stick) { chat.scrollTop = chat.scrollHeight; phone.stick = false; }
  }

  function refreshFeed(phone) {
    if (!phone.openid) { return Promise.resolve(); }
    return api("GET", "/feed?openid=" + encodeURIComponent(phone.openid)).then(function (data) {
      if (data.openid === phone.openid) { renderFeed(phone, data.items || []); }
    });
  }

  /* ------------------------------------------------------------------ identities */

  function fillIdentities(selectOpenid) {
    return api("GET", "/identities").then(function (data) {
      ["customer", "staff"].forEach(function (role) {
        var phone = phones[role];
        var list = role === "staff" ? data.staff : data.customers;
        var select = $(phone.root, ".who");
        var keep = (selectOpenid && selectOpenid[role]) || phone.openid;
        select.textContent = "";
        list.forEach(function (p) {
          var opt = el("option", null, p.label);
          opt.value = p.openid;
          select.appendChild(opt);
        });
        if (keep && list.some(function (p) { return p.openid === keep; })) { select.value = keep; }
        switchTo(phone, select.value);
      });
    });
  }

  function switchTo(phone, openid) {
    if (phone.openid === openid) { return; }
    phone.openid = openid;
    phone.lastFeed = null;
    phone.stick = true;
    closeBrowser(phone);
    refreshFeed(phone);
  }

  /* ------------------------------------------------------------------ sending */

  function send(phone, payload) {
    if (!phone.openid) { return Promise.resolve(); }
    payload.openid = phone.openid;
    phone.stick = true;
    phone.root.classList.add("busy");
    return api("POST", "/send", payload).then(function () {
      phone.root.classList.remove("busy");
      return refreshFeed(phone).then(function () { return fillIdentitiesQuietly(); });
    });
  }

  function fillIdentitiesQuietly() {
    var keep = { customer: phones.customer.openid, staff: phones.staff.openid };
    return fillIdentities(keep);
  }

  /* ------------------------------------------------------------------ the in-phone browser */

  function openLink(phone, url) {
    var target = new URL(url, location.href);
    if (target.origin !== location.origin) { window.open(url, "_blank", "noopener"); return; }
    api("POST", "/browse", { openid: phone.openid }).then(function () {
      var browser = $(phone.root, ".browser");
      browser.hidden = false;
      $(browser, ".browser-title").textContent = "正在打开…";
      $(browser, "iframe").src = target.pathname + target.search;
    });
  }

  function closeBrowser(phone) {
    var browser = $(phone.root, ".browser");
    if (browser.hidden) { return; }
    browser.hidden = true;
    $(browser, ".paysheet").hidden = true;
    $(browser, "iframe").src = "about:blank";
    api("POST", "/browse/close", {});
    refreshFeed(phone);
  }

  function onFrameLoad(phone) {
    var frame = $(phone.root, "iframe");
    var win = frame.contentWindow;
    if (!win || !win.document || win.location.href === "about:blank") { return; }
    $(phone.root, ".browser-title").textContent = win.document.title || "网页";
    win.WeixinJSBridge = {
      invoke: function (name, params, callback) {
        if (name !== "getBrandWCPayRequest") { callback({ err_msg: name + ":fail" }); return; }
        paySheet(phone, params, callback);
      },
      on: function () {}, call: function () {}
    };
    win.document.dispatchEvent(new win.Event("WeixinJSBridgeReady"));
  }

  function paySheet(phone, params, callback) {
    var sheet = $(phone.root, ".paysheet");
    var error = $(sheet, ".paysheet-error");
    var body = { openid: phone.openid, params: params };
    api("POST", "/wxpay/check", body).then(function (facts) {
      if (facts._status !== 200) { callback({ err_msg: "get_brand_wcpay_request:fail", err_desc: facts.message }); return; }
      $(sheet, ".paysheet-merchant").textContent = facts.merchant;
      $(sheet, ".paysheet-amount").textContent = facts.amount_text;
      $(sheet, ".paysheet-desc").textContent = facts.description;
      error.hidden = true;
      sheet.hidden = false;
      $(sheet, ".confirm").onclick = function () {
        api("POST", "/wxpay/pay", body).then(function (res) {
          if (res._status !== 200) { error.textContent = res.message; error.hidden = false; return; }
          sheet.hidden = true;
          callback({ err_msg: res.err_msg });
        });
      };
      $(sheet, ".cancel").onclick = function () {
        sheet.hidden = true;
        callback({ err_msg: "get_brand_wcpay_request:cancel" });
      };
    });
  }

  /* ------------------------------------------------------------------ adding identities, scanning */

  function addIdentity(role) {
    var dialog = document.getElementById("add-dialog");
    dialog.dataset.role = role;
    dialog.returnValue = "";
    dialog.showModal();
    dialog.onclose = function () {
      if (dialog.returnValue !== "ok") { return; }
      var form = $(dialog, "form");
      var body = { kind: role, name: form.elements.name.value, role: form.elements.role.value };
      api("POST", "/identities", body).then(function (res) {
        var keep = { customer: phones.customer.openid, staff: phones.staff.openid };
        keep[role] = res.openid;
        fillIdentities(keep);
      });
    };
  }

  function scan(phone) {
    api("POST", "/scan", { openid: phone.openid }).then(function (res) {
      if (res._status !== 200) { alert(res.error); return; }
      refreshFeed(phone).then(fillIdentitiesQuietly);
    });
  }

  /* ------------------------------------------------------------------ the side panel */

  function cells(row, values) {
    var tr = el("tr");
    values.forEach(function (v) { tr.appendChild(el("td", null, v === null || v === undefined ? "" : String(v))); });
    row.appendChild(tr);
    return tr;
  }

  function renderPanel(data) {
    var erp = document.getElementById("erp-rows");
    erp.textContent = "";
    data.erp.forEach(function (r) {
      var tr = cells(erp, [r.n, r.time, r.type, r.bill, r.seq, r.status,
        r.signature_ok ? (r.duplicate ? "✓ 重复" : "✓ 有效") : "✗ 无效"]);
      tr.className = r.signature_ok ? "ok" : "bad";
      tr.dataset.type = r.type || "";
    });
    var summary = document.getElementById("outbox-summary");
    summary.textContent = "";
    Object.keys(data.outbox.subscribers).sort().forEach(function (name) {
      var s = data.outbox.subscribers[name];
      var counts = Object.keys(s.counts).map(function (k) { return k + " " + s.counts[k]; }).join("，") || "无投递";
      var line = el("p", "sub", "[" + name + "] " + counts + "；待投递 " + s.due_now + "，退避中 " + s.backing_off);
      if (s.not_ready) { line.appendChild(el("strong", "bad", " 未投递：" + s.not_ready)); }
      summary.appendChild(line);
    });
    var rows = document.getElementById("outbox-rows");
    rows.textContent = "";
    data.outbox.events.forEach(function (e) {
      var d = Object.keys(e.deliveries).sort().map(function (k) {
        var x = e.deliveries[k];
        return k + ":" + x.status + (x.attempts > 1 ? "×" + x.attempts : "") + (x.last_error ? "（" + x.last_error + "）" : "");
      }).join(" ");
      cells(rows, [e.time, e.topic, e.bill, e.seq, d]);
    });
    fillLog("log-wx", data.logs.wechat_api, function (r) {
      return r.time + " " + r.method + " " + r.path + " → " + r.status + (r.errcode ? " errcode " + r.errcode : "");
    });
    fillLog("log-pay", data.logs.wechatpay, function (r) {
      return r.time + " " + r.method + " " + r.path + " → " + r.status + (r.code ? " " + r.code : "");
    });
    fillLog("log-notify", data.logs.wechatpay_notifications, function (r) {
      return r.time + " " + r.event_type + " " + (r.ref || "") + " 第" + r.attempt + "次 → " + r.status;
    });
  }

  function fillLog(id, list, line) {
    var ol = document.getElementById(id);
    ol.textContent = "";
    if (!list.length) { ol.appendChild(el("li", "empty", "（暂无）")); }
    list.forEach(function (r) { ol.appendChild(el("li", null, line(r))); });
  }

  function refreshPanel() {
    return api("GET", "/panel").then(renderPanel);
  }

  /* ------------------------------------------------------------------ wiring */

  function setupPhone(root) {
    var phone = { root: root, role: root.dataset.role, openid: null, lastFeed: null, stick: true };
    phones[phone.role] = phone;
    $(root, ".who").addEventListener("change", function (e) { switchTo(phone, e.target.value); });
    $(root, ".add").addEventListener("click", function () { addIdentity(phone.role); });
    $(root, ".composer").addEventListener("submit", function (e) {
      e.preventDefault();
      var input = e.target.elements.text;
      var text = input.value.trim();
      if (!text) { return; }
      input.value = "";
      send(phone, { text: text });
    });
    root.querySelectorAll("[data-click]").forEach(function (b) {
      b.addEventListener("click", function () { send(phone, { click: b.dataset.click, label: b.textContent }); });
    });
    root.querySelectorAll("[data-send]").forEach(function (b) {
      b.addEventListener("click", function () { send(phone, { text: b.dataset.send }); });
    });
    root.querySelectorAll("[data-fill]").forEach(function (b) {
      b.addEventListener("click", function () { var i = $(root, "input"); i.value = b.dataset.fill; i.focus(); });
    });
    var scanButton = $(root, ".scan");
    if (scanButton) { scanButton.addEventListener("click", function () { scan(phone); }); }
    $(root, ".close").addEventListener("click", function () { closeBrowser(phone); });
    $(root, "iframe").addEventListener("load", function () { onFrameLoad(phone); });
  }

  function setupTabs() {
    document.querySelectorAll("[data-tab]").forEach(function (tab) {
      tab.addEventListener("click", function () {
        document.querySelectorAll("[data-tab]").forEach(function (t) { t.setAttribute("aria-selected", String(t === tab)); });
        document.querySelectorAll("[data-pane]").forEach(function (p) { p.hidden = p.dataset.pane !== tab.dataset.tab; });
      });
    });
  }

  function loop(fn, ms) {
    var run = function () { fn().catch(function () {}).then(function () { setTimeout(run, ms); }); };
    setTimeout(run, ms);
  }

  document.querySelectorAll(".phone").forEach(setupPhone);
  setupTabs();
  fillIdentities(null).then(function () {
    loop(function () { return Promise.all([refreshFeed(phones.customer), refreshFeed(phones.staff)]); }, FEED_MS);
    loop(refreshPanel, PANEL_MS);
    refreshPanel();
  });
})();
