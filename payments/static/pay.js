/* The pay page: JSAPI inside WeChat (WeixinJSBridge), Native QR outside; both poll /status until the
   server knows the payment. `:ok` from the bridge is not proof of payment: only the server is. */
(function () {
  "use strict";
  var root = document.getElementById("pay");
  if (!root || root.dataset.payable !== "1") { return; }
  var base = root.dataset.base;
  var initialPaid = parseInt(root.dataset.paid, 10);
  var polling = null;

  function show(state) {
    var cards = document.querySelectorAll("[data-state]");
    for (var i = 0; i < cards.length; i++) { cards[i].hidden = cards[i].dataset.state !== state; }
  }

  function showError(message) {
    var box = document.getElementById("amount-error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  function succeeded(status) {
    document.getElementById("paid-text").textContent = status.paid_text;
    document.getElementById("outstanding-text").textContent = status.outstanding_text;
    document.getElementById("status-label").textContent = status.status_label;
    document.getElementById("success-detail").textContent =
      status.outstanding_fen > 0 ? "本次款项已到账，剩余待付 " + status.outstanding_text + "。" : "账单已付清，感谢您的支付。";
    show("success");
  }

  function poll(outTradeNo, interval) {
    if (polling) { clearTimeout(polling); }
    var url = base + "/status" + (outTradeNo ? "?attempt=" + encodeURIComponent(outTradeNo) : "");
    fetch(url, { cache: "no-store", credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (status) {
        var attemptDone = status.attempt && status.attempt.status === "succeeded";
        if (attemptDone || status.paid_fen > initialPaid) { succeeded(status); return; }
        polling = setTimeout(function () { poll(outTradeNo, interval); }, interval);
      })
      .catch(function () { polling = setTimeout(function () { poll(outTradeNo, interval); }, interval * 2); });
  }

  function whenBridgeReady(callback) {
    if (typeof window.WeixinJSBridge === "object" && window.WeixinJSBridge) { callback(); return; }
    document.addEventListener("WeixinJSBridgeReady", callback, { once: true });
  }

  function invoke(order) {
    whenBridgeReady(function () {
      window.WeixinJSBridge.invoke("getBrandWCPayRequest", order.params, function (res) {
        var msg = (res && res.err_msg) || "";
        if (msg === "get_brand_wcpay_request:ok") { show("confirming"); poll(order.out_trade_no, 1000); return; }
        document.getElementById("retry-detail").textContent =
          msg === "get_brand_wcpay_request:cancel" ? "您已取消支付，可以重新支付。" : "支付没有成功，可以重新支付。";
        show("retry");
      });
    });
  }

  function startJsapi() {
    showError("");
    var button = document.getElementById("pay-button");
    button.disabled = true;
    fetch(base + "/jsapi", {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ amount: document.getElementById("amount").value })
    })
      .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
      .then(function (answer) {
        button.disabled = false;
        if (!answer.ok) { show("ready"); showError(answer.body.error ? answer.body.error.message : "请稍后再试"); return; }
        invoke(answer.body);
      })
      .catch(function () { button.disabled = false; showError("网络不好，请稍后再试"); });
  }

  if (root.dataset.mode === "jsapi") {
    document.getElementById("pay-button").addEventListener("click", startJsapi);
    document.getElementById("retry-button").addEventListener("click", function () { show("ready"); startJsapi(); });
    document.getElementById("amount-form").addEventListener("submit", function (e) { e.preventDefault(); startJsapi(); });
  } else {
    document.getElementById("retry-button").addEventListener("click", function () { location.reload(); });
    if (document.getElementById("qr")) { poll(null, 2000); }
  }
})();
