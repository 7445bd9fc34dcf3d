-- Steps shared by the miltertest scripts here; each script loads this file with
-- dofile(common). Run as: miltertest -s SCRIPT -D port=PORT -D common=THIS_FILE
--
-- miltertest prints nothing for a Lua error, so a failure is reported with
-- mt.echo and os.exit(1); a script that gets to the end prints PASS.

function fail(message)
  mt.echo("FAIL: " .. message)
  os.exit(1)
end

function expect(conn, wanted, step)
  local got = mt.getreply(conn)
  if got ~= wanted then
    fail(step .. ": milter reply " .. got .. ", wanted " .. wanted)
  end
end

-- A connection from client.test [127.0.0.9] to server_address, the local address
-- the MTA reports as {daemon_addr}; queue_id becomes the {i} of MAIL FROM.
function connect(server_address, queue_id)
  local conn = mt.connect("inet:" .. port .. "@127.0.0.1", 50, 0.1)
  if conn == nil then
    fail("cannot connect to the milter on port " .. port)
  end
  -- Connect macros must come before conninfo, or the milter sees none.
  mt.macro(conn, SMFIC_CONNECT, "{daemon_addr}", server_address,
           "{daemon_name}", "smtpd")
  if mt.conninfo(conn, "client.test", "127.0.0.9") ~= nil then
    fail("conninfo")
  end
  expect(conn, SMFIR_CONTINUE, "connect")
  mt.macro(conn, SMFIC_MAIL, "i", queue_id)
  return conn
end

function mail_from(conn, wanted, sender, ...)
  if mt.mailfrom(conn, sender, ...) ~= nil then
    fail("MAIL FROM " .. sender)
  end
  expect(conn, wanted, "MAIL FROM " .. sender)
end

function rcpt_to(conn, rcpt, wanted)
  if mt.rcptto(conn, rcpt) ~= nil then
    fail("RCPT TO " .. rcpt)
  end
  expect(conn, wanted, "RCPT TO " .. rcpt)
end

-- A step's reply, unless the milter negotiated it away (SMFIP_NR_*): then the
-- MTA reads none and goes on.
function expect_unless(conn, no_reply, wanted, step)
  if not mt.test_option(conn, no_reply) then
    expect(conn, wanted, step)
  end
end

-- Header fields ({name, value} pairs), the end of the header, one body chunk and
-- the end of the message; the caller checks the end-of-message reply. Steps the
-- milter negotiated away are left out, as Postfix and sendmail leave them out.
function message(conn, fields, body)
  for _, field in ipairs(fields) do
    if mt.header(conn, field[1], field[2]) ~= nil then
      fail("header " .. field[1])
    end
    expect_unless(conn, SMFIP_NR_HDR, SMFIR_CONTINUE, "header " .. field[1])
  end
  if not mt.test_option(conn, SMFIP_NOEOH) then
    if mt.eoh(conn) ~= nil then
      fail("end of header")
    end
    expect(conn, SMFIR_CONTINUE, "end of header")
  end
  if mt.bodystring(conn, body) ~= nil then
    fail("body")
  end
  expect_unless(conn, SMFIP_NR_BODY, SMFIR_CONTINUE, "body")
  if mt.eom(conn) ~= nil then
    fail("end of message")
  end
end

function passed(conn)
  mt.disconnect(conn)
  mt.echo("PASS")
end
