"""PostgreSQL: renopay_apply_fitting_payment(), a fitting WeChat payment applied in one call

A payment notification that fits its order and its bill (the common case) is applied, and its raw
notification recorded, by one function call — one statement, in its own transaction: one round trip
and no BEGIN/COMMIT of ours. It does what payments/applying.py's hot path does, in the same order and
under the same locks (the bill's row, then its attempts, then the month's receipt counter), and writes
the same rows: the attempt succeeded, the bill credited with a seq for the event, the bill's other
pending orders closed when it is paid, the receipt number, the Payment, the ``payment.succeeded``
event (its payload built here: the bill's webhook view and event data, see payments/bills.py) and its
deliveries, and the raw notification with its outcome. Anything else — an unknown order, a wrong
amount, a bill that no longer takes this money — returns 'general' having written nothing, and the
caller's general path decides. tests/integration/test_stored_apply.py holds it to the Python path,
row for row and payload for payload. SQLite has no such function (its hot path is in-process).

Each statement of a plpgsql function sees the data committed when it starts (READ COMMITTED): after
waiting for the bill's lock, the look-up of the transaction finds a payment that a concurrent
delivery of the same notification committed meanwhile, and answers 'duplicate'.

Revision ID: 0009_apply_payment_function
Revises: 0008_hot_path_indexes
Create Date: 2026-11-27 07:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0009_apply_payment_function"
down_revision = "0008_hot_path_indexes"
branch_labels = None
depends_on = None

FUNCTION = r"""
CREATE OR REPLACE FUNCTION renopay_apply_fitting_payment(
    p_out_trade_no text,
    p_transaction_id text,
    p_amount_fen bigint,
    p_payer_openid text,
    p_paid_at timestamp,           -- naive UTC, as every timestamp column
    p_paid_at_text text,           -- the same instant as the event shows it (China time)
    p_now timestamp,
    p_now_text text,
    p_counter_name text,
    p_receipt_prefix text,
    p_event_id text,
    p_subscribers text[],
    p_notification_event_id text,
    p_notification_event_type text,
    p_notification_body text,
    p_notification_resource json
) RETURNS TABLE (r_outcome text, r_payment_id integer, r_receipt_no text)
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    b bills%ROWTYPE;
    a payment_attempts%ROWTYPE;
    cu customers%ROWTYPE;
    v_outcome text := 'applied';
    v_paid bigint;
    v_status text;
    v_seq integer;
    v_counter integer;
    v_receipt text;
    v_payment_id integer;
BEGIN
    SELECT bills.* INTO b
      FROM payment_attempts JOIN bills ON bills.id = payment_attempts.bill_id
     WHERE payment_attempts.out_trade_no = p_out_trade_no
       FOR UPDATE OF bills;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'general'::text, NULL::integer, NULL::text;
        RETURN;
    END IF;

    IF EXISTS (SELECT 1 FROM payments WHERE payments.transaction_id = p_transaction_id) THEN
        v_outcome := 'duplicate';
    ELSE
        SELECT * INTO a FROM payment_attempts WHERE payment_attempts.out_trade_no = p_out_trade_no;
        IF a.amount_fen <> p_amount_fen OR a.status NOT IN ('pending', 'closed')
           OR b.status NOT IN ('open', 'partially_paid') OR p_amount_fen > b.amount_fen - b.paid_fen THEN
            RETURN QUERY SELECT 'general'::text, NULL::integer, NULL::text;
            RETURN;
        END IF;

        UPDATE payment_attempts SET status = 'succeeded', next_check_at = NULL WHERE id = a.id;
        v_paid := b.paid_fen + p_amount_fen;
        v_status := CASE WHEN v_paid = b.amount_fen THEN 'paid' ELSE 'partially_paid' END;
        v_seq := b.seq + 1;
        UPDATE bills SET paid_fen = v_paid, status = v_status, seq = v_seq, updated_at = p_now
         WHERE id = b.id;
        IF v_status = 'paid' THEN  -- a paid bill takes no more money: close its other orders
            UPDATE payment_attempts
               SET status = 'closed', closed_at = p_paid_at, close_reason = 'bill_paid'
             WHERE bill_id = b.id AND status = 'pending' AND id <> a.id;
        END IF;

        INSERT INTO counters AS c (name, value) VALUES (p_counter_name, 1)
            ON CONFLICT (name) DO UPDATE SET value = c.value + 1
            RETURNING c.value INTO v_counter;
        v_receipt := p_receipt_prefix || lpad(v_counter::text, greatest(5, length(v_counter::text)), '0');

        INSERT INTO payments (bill_id, attempt_id, method, amount_fen, excess_fen, refunded_fen,
                              transaction_id, receipt_no, payer_openid, recorded_by_id, note, paid_at,
                              created_at)
        VALUES (b.id, a.id, 'wechat', p_amount_fen, 0, 0, p_transaction_id, v_receipt, p_payer_openid,
                NULL, NULL, p_paid_at, p_now)
        RETURNING id INTO v_payment_id;

        SELECT * INTO cu FROM customers WHERE id = b.customer_id;
        INSERT INTO outbox_events (id, topic, bill_id, seq, payload, created_at)
        VALUES (p_event_id, 'payment.succeeded', b.id, v_seq, json_build_object(
            'id', p_event_id,
            'type', 'payment.succeeded',
            'created_at', p_now_text,
            'bill', json_build_object(
                'number', b.number, 'erp_ref', b.erp_ref, 'seq', v_seq, 'amount_fen', b.amount_fen,
                'paid_fen', v_paid, 'refunded_fen', b.refunded_fen, 'status', v_status,
                'contract_no', b.contract_no, 'stage', b.stage),
            'data', json_build_object(
                'title', b.title,
                'outstanding_fen', b.amount_fen - v_paid,
                'due_date', to_char(b.due_date, 'YYYY-MM-DD'),
                'issued_by_id', b.issued_by_id,
                'customer', json_build_object('name', cu.name, 'erp_ref', cu.erp_ref, 'openid', cu.openid),
                'payment', json_build_object(
                    'receipt_no', v_receipt, 'method', 'wechat', 'amount_fen', p_amount_fen,
                    'applied_fen', p_amount_fen, 'transaction_id', p_transaction_id,
                    'out_trade_no', p_out_trade_no, 'paid_at', p_paid_at_text, 'note', NULL),
                'late', a.status = 'closed')), p_now);
        INSERT INTO outbox_deliveries (event_id, subscriber, bill_id, seq, status, attempts,
                                       next_attempt_at, created_at)
        SELECT p_event_id, subscriber, b.id, v_seq, 'pending', 0, p_now, p_now
          FROM unnest(p_subscribers) AS subscriber;
    END IF;

    -- The raw notification with its outcome; a redelivery only counts (never rewrites the first outcome).
    INSERT INTO payment_notifications AS n (event_id, event_type, channel, reference, body, resource,
                                            deliveries, received_at, outcome, processed_at)
    VALUES (p_notification_event_id, p_notification_event_type, 'payment', p_out_trade_no,
            p_notification_body, p_notification_resource, 1, p_now, v_outcome, p_now)
    ON CONFLICT (event_id) DO UPDATE
       SET deliveries = n.deliveries + 1,
           outcome = coalesce(n.outcome, excluded.outcome),
           processed_at = coalesce(n.processed_at, excluded.processed_at);

    RETURN QUERY SELECT v_outcome, v_payment_id, v_receipt;
END
$fn$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS renopay_apply_fitting_payment(text, text, bigint, text, timestamp, text,"
            " timestamp, text, text, text, text, text[], text, text, text, json)"
        )
